"""Both sparse branches as one autograd Function: LTIS and STIS share q, k, v and their gradients;
and `attend`, the branches with the gate and the output projection, fused further for inference.

Two Functions would each allocate dq, dk, dv and autograd would add them (three more kernels and
three more buffers per step). Here the STIS backward kernels add their gradients into the LTIS
ones in place (deterministic: LTIS writes, then STIS reads and adds), and the host walks one
autograd node instead of two: at short L a step waits on the host, not on the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from blossom.attention import ltis_triton, stis_triton
from blossom.attention.gate_triton import check_gate_args, gated_merge
from blossom.attention.reference import merge_heads
from blossom.attention.triton_common import device_lengths


class _Branches(torch.autograd.Function):
    """Saves what the two branch Functions would: q, k, v, block_idx, both outputs and logsumexps."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        ltis, ltis_lse = ltis_triton.launch_forward(q, k, v, block_idx, scale, seq_len)
        stis, stis_lse = stis_triton.launch_forward(q, k, v, scale, seq_len)
        ctx.save_for_backward(q, k, v, block_idx, seq_len, ltis, ltis_lse, stis, stis_lse)
        ctx.scale = scale
        return ltis, stis

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dltis: Tensor, dstis: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        q, k, v, block_idx, seq_len, ltis, ltis_lse, stis, stis_lse = ctx.saved_tensors
        grads = ltis_triton.launch_backward(q, k, v, block_idx, seq_len, ltis, ltis_lse, dltis, ctx.scale)
        grads = stis_triton.launch_backward(q, k, v, seq_len, stis, stis_lse, dstis, ctx.scale, add_to=grads)
        return *grads, None, None, None


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
    """gated_merge(*both_branches(q, k, v, block_idx, scale, seq_len), gate_logits, weight): [B, L, D].

    While autograd records, exactly that. Otherwise (inference) the STIS forward kernel mixes its
    output with the LTIS output by the gates as it writes them (stis_triton.launch_forward_gated):
    no STIS output buffer, no logsumexps, no gate kernel, the same values.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, gate_logits, weight)):
        return gated_merge(*both_branches(q, k, v, block_idx, scale, seq_len), gate_logits, weight)
    ltis_triton.check_inputs(q, k, v, block_idx, seq_len)
    check_gate_args(tuple(q.shape), gate_logits, weight)
    b, heads, length, _ = q.shape
    lengths = device_lengths(seq_len, q.device)
    ltis, _ = ltis_triton.launch_forward(q, k, v, block_idx, scale, lengths)
    mix = stis_triton.launch_forward_gated(q, k, v, scale, lengths, ltis, gate_logits.reshape(b * length, 2 * heads))
    del ltis  # before the projection's output: the inference peak stays below the unfused path's
    return F.linear(merge_heads(mix), weight.to(q.dtype))
