"""Both sparse branches as one autograd Function: LTIS and STIS share q, k, v and their gradients;
and `attend`, the branches with the gate and the output projection, one Function more, whose
backward folds the gate into the branches' backward kernels. Forward, one kernel computes both
branches (ltis_triton.launch_both_forward: the STIS rows scored in the LTIS programs, H100, B = 64,
bf16: 0.88-0.91x the inference step's GPU work of separate kernels at L = 200-8192, 0.96-0.97x
training's, results/bench/README.md, session 13).

Two Functions would each allocate dq, dk, dv and autograd would add them (three more kernels and
three more buffers per step). Here the STIS backward runs first and writes dq (fp32 where LTIS's
atomics follow), dk and dv; the LTIS kernels add theirs in place (dq with atomics, see ltis_triton),
and the host walks one autograd node instead of two: at short L a step waits on the host, not on the
GPU. Under the gate the STIS dq kernel also writes the LTIS branch's delta, gates and logits'
gradient from the dO rows it holds, so LTIS's prep kernel does not run (H100, B = 64, bf16: the
training step's GPU work 0.973-0.980x the LTIS-first order's at L = 512-8192,
results/bench/README.md, session 11).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from blossom.attention import ltis_triton, stis_triton
from blossom.attention.gate_triton import check_gate_args, mixed_weight_grad
from blossom.attention.ltis_index_triton import inverted_index
from blossom.attention.reference import merge_heads
from blossom.attention.rotary_triton import check_projection_args, project_backward, project_forward, project_split_rope
from blossom.attention.side_stream import SideStream
from blossom.attention.triton_common import device_lengths


class _Branches(torch.autograd.Function):
    """Saves what the two branch Functions would: q, k, v, block_idx, both outputs and logsumexps."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        ltis, ltis_lse, stis, stis_lse, _ = ltis_triton.launch_both_forward(q, k, v, block_idx, scale, seq_len)
        ctx.save_for_backward(q, k, v, block_idx, seq_len, ltis, ltis_lse, stis, stis_lse)
        ctx.scale = scale
        return ltis, stis

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dltis: Tensor, dstis: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        dq, dk, dv = _branches_backward(ctx.saved_tensors, ctx.scale, dltis, dstis)
        return dq.to(dk.dtype), dk, dv, None, None, None


def _branches_backward(
    saved: tuple[Tensor, ...], scale: float, dltis: Tensor, dstis: Tensor, gate: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, ...]:
    """dq, dk, dv of both branches from what _Branches saves: STIS writes, LTIS adds in place.
    gate: (logits, their gradient) [B * L, 2H]; dltis and dstis are then both the mix's gradient.
    dq is fp32 where LTIS adds it with atomics (ltis_triton.uses_atomics), else in the inputs'
    dtype: the callers cast it. LTIS's inverted index is built on the side stream, beside the STIS
    backward, which does not read it; it is allocated first, before any gradient buffer exists: its
    buffers then never sit on top of them (the step's peak memory). Under the gate, on the atomics
    path, STIS's window and distance 16 go to the LTIS dk/dv kernel (ltis_triton's stis_window),
    with the STIS rows (delta, gates) the STIS dq kernel writes."""
    q, k, v, block_idx, seq_len, ltis, ltis_lse, stis, stis_lse = saved
    side = SideStream(q.device)
    with side:
        index = inverted_index(block_idx, seq_len)
    atomics = ltis_triton.uses_atomics()
    prepared = stis_rows = None
    if gate is not None and atomics:  # both branches' delta and gates, written by the STIS dq kernel
        prepared = torch.empty_like(ltis_lse), torch.empty_like(ltis_lse)
        stis_rows = torch.empty_like(stis_lse), torch.empty_like(stis_lse)
    grads = stis_triton.launch_backward(q, k, v, seq_len, stis, stis_lse, dstis, scale, gate=gate,
                                        dq_dtype=torch.float32 if atomics else None,
                                        ltis=(ltis, *prepared) if prepared else None,
                                        window_to_ltis=stis_rows)  # fmt: skip
    side.join(*index)
    return ltis_triton.launch_backward(q, k, v, block_idx, seq_len, ltis, ltis_lse, dltis, scale, gate=gate,
                                       add_to=grads, prepared=prepared, index=index,
                                       stis_window=(stis_lse, *stis_rows) if stis_rows else None)  # fmt: skip


class _Attend(torch.autograd.Function):
    """Branches, gate and projection for training: one forward kernel computes both branches and
    writes the gated mix beside their outputs (ltis_triton.launch_both_forward: no gate kernel, no
    second read of either output), and the host walks one autograd node instead of two. Saves what
    _Branches and _GatedMerge would, not the mix: a model holds every layer's saved tensors at once,
    and a mix per layer cost the ML-1M headline model 400 MiB of peak (H100, 2 layers, B = 2048,
    L = 200, fp32). The backward recomputes the mix for the projection's weight gradient (the gate's
    forward kernel) and frees it, or at long L forms it tile by tile inside the kernel that sums that
    gradient (gate_triton.mixed_weight_grad); the branches' backward kernels then read the mix's
    gradient and apply the gates themselves (the kernels that score the pairs scale their
    probabilities and dp by the gate; the deterministic LTIS dq kernel and the STIS dq kernel form dO
    in registers) and write the logits' gradient: no dO buffer per branch. The mix and the weight
    gradient run on the side stream (side_stream.py), beside the mix gradient's GEMM and the STIS
    backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None,
        gate_logits: Tensor, weight: Tensor,
    ) -> Tensor:
        out, saved = _attend_forward(q, k, v, block_idx, scale, seq_len, gate_logits, weight)
        ctx.save_for_backward(*saved)
        ctx.scale, ctx.logits_shape = scale, gate_logits.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        dq, dk, dv, dgl, dweight = _attend_backward(ctx.saved_tensors, ctx.scale, dout)
        return dq.to(dk.dtype), dk, dv, None, None, None, dgl.view(ctx.logits_shape), dweight


def _attend_forward(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None, gate_logits: Tensor,
    weight: Tensor,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """_Attend's output and what its backward reads (_attend_backward's saved)."""
    b, heads, length, _ = q.shape
    gl = gate_logits.reshape(b * length, 2 * heads).contiguous()  # the kernels index dgl with its strides
    ltis, ltis_lse, stis, stis_lse, mix = ltis_triton.launch_both_forward(q, k, v, block_idx, scale, seq_len, gl)
    out = F.linear(merge_heads(mix), weight.to(q.dtype))
    return out, (q, k, v, block_idx, seq_len, ltis, ltis_lse, stis, stis_lse, gl, weight)


def _attend_backward(saved: tuple[Tensor, ...], scale: float, dout: Tensor) -> tuple[Tensor, ...]:
    """dq (fp32 where LTIS adds it with atomics, _branches_backward), dk, dv, the logits' gradient
    [B * L, 2H] and the output projection's weight gradient, from _attend_forward's saved."""
    q, k, v, block_idx, seq_len, ltis, ltis_lse, stis, stis_lse, gl, weight = saved
    dout = dout.to(q.dtype)
    side = SideStream(q.device)
    with side:
        dweight = mixed_weight_grad(dout, ltis, stis, gl, weight)
    b, heads, length, d = q.shape
    dmix = (dout @ weight.to(q.dtype)).view(b, length, heads, d).transpose(1, 2)
    dgl = torch.empty_like(gl)
    dq, dk, dv = _branches_backward(saved[:9], scale, dmix, dmix, gate=(gl, dgl))
    side.join(dweight)
    return dq, dk, dv, dgl, dweight


class _ProjectAttend(torch.autograd.Function):
    """The layer from x to its output, for training: rotary_triton's projection, the block choice
    and _Attend as one autograd node. _Attend hands autograd an fp32 dq (the LTIS atomics add into
    it), which autograd casts to q's dtype before the projection's backward (H100, B = 64, bf16: 4.4
    us at L = 512, 68 at 4096); here the rotary backward kernel reads the fp32 dq itself and writes
    the projection's gradient rows over it (rotary_triton._rows_over). Saves what
    _ProjectSplitRope and _Attend would. Under autocast the projection runs its Linears in autocast's
    dtype (custom_fwd / custom_bwd, as _ProjectSplitRope)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: FunctionCtx, x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, weight: Tensor, n_heads: int,
        kv_heads: int, choose: Callable[[Tensor, Tensor], Tensor], scale: float, seq_len: Tensor | None,
    ) -> Tensor:
        q, k, v, gate_logits = project_forward(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)
        block_idx = choose(q, k)
        ltis_triton.check_inputs(q, k, v, block_idx, seq_len)
        check_gate_args(tuple(q.shape), gate_logits, weight)
        out, saved = _attend_forward(q, k, v, block_idx, scale, seq_len, gate_logits, weight)
        ctx.save_for_backward(x, w_qkv, w_gate, *saved)
        ctx.scale, ctx.heads = scale, (n_heads, kv_heads)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        x, w_qkv, w_gate, *saved = ctx.saved_tensors
        dq, dk, dv, dgl, dweight = _attend_backward(tuple(saved), ctx.scale, dout)
        grads = project_backward((x, w_qkv, w_gate), ctx.heads, (dq, dk, dv), dgl, dtype=dk.dtype, reuse_dq=True)
        return *grads, dweight, None, None, None, None, None


def project_attend(
    x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int,
    choose: Callable[[Tensor, Tensor], Tensor], scale: float, seq_len: Tensor | None, weight: Tensor,
) -> Tensor:
    """attend(q, k, v, choose(q, k), scale, seq_len, logits, weight) of (q, k, v, logits) =
    project_split_rope(x, w_qkv, w_gate, b_gate, n_heads, kv_heads): [B, L, D], the same values and
    gradients (choose, q and k to the selected blocks, is called without gradient), one autograd
    node in training (_ProjectAttend)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_qkv, w_gate, b_gate, weight)):
        check_projection_args(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)
        return _ProjectAttend.apply(x, w_qkv, w_gate, b_gate, weight, n_heads, kv_heads, choose, scale,
                                    device_lengths(seq_len, x.device))  # fmt: skip
    q, k, v, gate_logits = project_split_rope(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)
    with torch.no_grad():
        block_idx = choose(q, k)
    return attend(q, k, v, block_idx, scale, seq_len, gate_logits, weight)


def both_branches(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(ltis_attention(...), stis_attention(...)) with the contracts of ltis_triton and
    stis_triton, gradients summed in place."""
    ltis_triton.check_inputs(q, k, v, block_idx, seq_len)
    return _Branches.apply(q, k, v, block_idx, scale, device_lengths(seq_len, q.device))


def attend(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None, gate_logits: Tensor,
    weight: Tensor,
) -> Tensor:
    """gated_merge(*both_branches(q, k, v, block_idx, scale, seq_len), gate_logits, weight): [B, L, D],
    the same values and gradients, with both branches and the gate in one forward kernel
    (ltis_triton.launch_both_forward). For inference that kernel writes only the mix: no branch
    output buffers, no logsumexps, no gate kernel.
    """
    ltis_triton.check_inputs(q, k, v, block_idx, seq_len)
    check_gate_args(tuple(q.shape), gate_logits, weight)
    lengths = device_lengths(seq_len, q.device)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, gate_logits, weight)):
        return _Attend.apply(q, k, v, block_idx, scale, lengths, gate_logits, weight)
    b, heads, length, _ = q.shape
    mix = ltis_triton.launch_both_forward(
        q, k, v, block_idx, scale, lengths, gate_logits.reshape(b * length, 2 * heads), keep_branches=False
    ).mix
    return F.linear(merge_heads(mix), weight.to(q.dtype))
