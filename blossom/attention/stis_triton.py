"""STIS (short-term) attention as Triton kernels: forward, backward and an autograd Function.

Query i attends key i - o for the offsets o of reference.stis_offsets (0..7, 8, 16, 32, ...).
STIS is a sum of shifted diagonals (DESIGN.md section 3): for a query tile [t0, t0 + T) and one
offset the keys are the contiguous tile [t0 - o, t0 + T - o). So a program walks the offsets,
loads one K/V tile per offset and scores it row-wise (d is tiny: multiply and sum over d, no
tensor cores), with an online softmax across offsets: no mask tensor, nothing L x L, memory
linear in L. One program serves all query heads of a GQA group, so every K/V load feeds H / G
heads. The offset loop is a runtime loop: unrolling it was ~6% faster on an H100 but compiles
once per offset count (per power-of-two bucket of L). The backward recomputes probabilities from
the stored logsumexp. dq is LTIS's dq kernel (ltis_triton.launch_dq) walking this branch's keys
on tensor cores as the fused forward does (the window as one tile, the powers of two as slot
tiles): 0.27 ms at L = 4096 where a kernel that walked the offsets on CUDA cores took 0.30 (H100,
B = 64, bf16, results/bench/README.md, session 14). dk/dv walk the offsets from the key side (key
s receives from queries s + o), so no atomics are needed. Under the gate, beside LTIS's atomics
path, the window and the distance 16 are LTIS's dk/dv kernel's (launch_backward's window_to_ltis):
it scores those queries against each key block anyway.

In the model (branches_triton) this forward kernel does not run: the LTIS forward kernel scores
the same rows on tensor cores beside its own (ltis_triton.launch_both_forward), which took
~0.12 ms at L = 4096 where this kernel takes 0.25 (H100, B = 64, bf16). This one serves
stis_attention, the branch on its own.

Right padding: rows at or past seq_len[b] write exact zeros, never load anything and give or
receive no gradient; tiles wholly past it skip every offset.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from blossom.attention import ltis_triton, reference
from blossom.attention.gate_triton import backward_gate_args
from blossom.attention.triton_common import LOG2E, branch_buffers, check_gqa, device_lengths, empty_blhd, valid_length

_LOCAL: tl.constexpr = tl.constexpr(reference.LOCAL_WINDOW)
# Offsets numbered 0 .. this - 1 (_offset): the window and the distance 16, LTIS's dk/dv kernel's under
# the gate (launch_backward's window_to_ltis; its _dkdv_rows masks the same distances)
_LEFT_TO_LTIS = reference.LOCAL_WINDOW + 2


@triton.jit
def _offset(j):
    """The j-th STIS offset: j for j <= LOCAL, then LOCAL << (j - LOCAL) (8, 16, 32, ...)."""
    return tl.where(j <= _LOCAL, j, _LOCAL << tl.maximum(j - _LOCAL, 0))


@triton.jit
def _head_ptrs(base, heads, rows, cols, s_h, s_l, s_d):
    """[heads, rows, cols] pointers into an [H, L, d] slice (query side). Built once per program:
    another offset only moves them by o * s_l."""
    return base + heads[:, None, None] * s_h + rows[None, :, None] * s_l + cols[None, None, :] * s_d


@triton.jit
def _row_ptrs(base, rows, cols, s_l, s_d):
    """[rows, cols] pointers into an [L, d] slice (key side)."""
    return base + rows[:, None] * s_l + cols[None, :] * s_d


@triton.jit
def _program(SEQ_LEN, length, kv_heads, BLOCK: tl.constexpr):
    """(first row of the tile, batch, kv head, valid length) of this program."""
    b = tl.program_id(1) // kv_heads
    return tl.program_id(0) * BLOCK, b, tl.program_id(1) % kv_heads, valid_length(SEQ_LEN, b, length)


@triton.jit
def _stis_fwd(
    Q, K, V, O, LSE, SEQ_LEN,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    so_b, so_h, so_l, so_d,
    length, num_offsets, kv_heads, qk_scale,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One query tile x (batch, kv head): O, the output of the group's query heads, and LSE,
    their logsumexp (natural log)."""
    t0, b, g, n_valid = _program(SEQ_LEN, length, kv_heads, BLOCK)
    heads = tl.arange(0, GROUP_P)
    rows = t0 + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_valid
    col_ok = cols < HEAD_DIM
    row_mask = (heads < GROUP)[:, None] & row_ok[None, :]
    qmask = row_mask[:, :, None] & col_ok[None, None, :]
    q_ptrs = _head_ptrs(Q + b * sq_b + g * GROUP * sq_h, heads, rows, cols, sq_h, sq_l, sq_d)
    q = tl.load(q_ptrs, mask=qmask, other=0.0).to(tl.float32)
    k_ptrs = _row_ptrs(K + b * sk_b + g * sk_h, rows, cols, sk_l, sk_d)
    v_ptrs = _row_ptrs(V + b * sv_b + g * sv_h, rows, cols, sv_l, sv_d)

    m = tl.full([GROUP_P, BLOCK], -1.0e30, tl.float32)  # finite: fully masked rows stay NaN-free
    denom = tl.zeros([GROUP_P, BLOCK], tl.float32)
    acc = tl.zeros([GROUP_P, BLOCK, BLOCK_D], tl.float32)
    if t0 < n_valid:  # a tile wholly in the padding skips every offset
        for j in range(num_offsets):
            o = _offset(j)
            key_ok = row_ok & (rows >= o)
            kv_mask = key_ok[:, None] & col_ok[None, :]
            k = tl.load(k_ptrs - o * sk_l, mask=kv_mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptrs - o * sv_l, mask=kv_mask, other=0.0).to(tl.float32)
            s = tl.sum(q * k[None, :, :], axis=2) * qk_scale  # log2 units
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, s)
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new)
            denom = denom * alpha + p
            acc = acc * alpha[:, :, None] + p[:, :, None] * v[None, :, :]
            m = m_new

    denom = tl.where(row_mask, denom, 1.0)
    out = tl.where(qmask, acc / denom[:, :, None], 0.0)
    out_mask = (heads < GROUP)[:, None, None] & (rows < length)[None, :, None] & col_ok[None, None, :]
    o_ptrs = _head_ptrs(O + b * so_b + g * GROUP * so_h, heads, rows, cols, so_h, so_l, so_d)
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=out_mask)
    tl.store(LSE + (b * kv_heads * GROUP + g * GROUP + heads)[:, None] * length + rows[None, :],
             (m + tl.log2(denom)) / LOG2E, mask=row_mask)


@triton.jit
def _stis_bwd_dkdv(
    Q, K, V, DO, DK, DV, LSE, DELTA, GATE, SEQ_LEN,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sdo_b, sdo_h, sdo_l, sdo_d,
    sdk_b, sdk_h, sdk_l, sdk_d,
    length, first_offset, num_offsets, kv_heads, scale, qk_scale,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dk, dv for one key tile x (batch, kv head): key s gathers from queries s + o of all the
    group's heads, for the offsets o numbered first_offset .. num_offsets - 1 (_offset), so each
    program owns its output rows (DK and DV share strides). GATE (if not None): DO is the mix's
    gradient, and GATE the rows' gates the dq kernel wrote, which scale the probabilities and dp."""
    s0, b, g, n_valid = _program(SEQ_LEN, length, kv_heads, BLOCK)
    heads = tl.arange(0, GROUP_P)
    keys = s0 + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < HEAD_DIM
    kv_mask = (keys < n_valid)[:, None] & col_ok[None, :]
    k_ptrs = _row_ptrs(K + b * sk_b + g * sk_h, keys, cols, sk_l, sk_d)
    v_ptrs = _row_ptrs(V + b * sv_b + g * sv_h, keys, cols, sv_l, sv_d)
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
    q_ptrs = _head_ptrs(Q + b * sq_b + g * GROUP * sq_h, heads, keys, cols, sq_h, sq_l, sq_d)
    do_ptrs = _head_ptrs(DO + b * sdo_b + g * GROUP * sdo_h, heads, keys, cols, sdo_h, sdo_l, sdo_d)
    lse_offs = (b * kv_heads * GROUP + g * GROUP + heads)[:, None] * length + keys[None, :]

    # Per-head accumulators, summed over the group once after the loop: summing every step would
    # reduce across warps (through shared memory) once per offset.
    dk = tl.zeros([GROUP_P, BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([GROUP_P, BLOCK, BLOCK_D], tl.float32)
    if s0 < n_valid:
        for j in range(first_offset, num_offsets):
            o = _offset(j)
            row_mask = (heads < GROUP)[:, None] & (keys + o < n_valid)[None, :]
            qmask = row_mask[:, :, None] & col_ok[None, None, :]
            q = tl.load(q_ptrs + o * sq_l, mask=qmask, other=0.0).to(tl.float32)
            do = tl.load(do_ptrs + o * sdo_l, mask=qmask, other=0.0).to(tl.float32)
            lse = tl.load(LSE + lse_offs + o, mask=row_mask, other=0.0) * LOG2E
            delta = tl.load(DELTA + lse_offs + o, mask=row_mask, other=0.0)
            s = tl.sum(q * k[None, :, :], axis=2) * qk_scale
            p = tl.where(row_mask, tl.exp2(s - lse), 0.0)
            dp = tl.sum(do * v[None, :, :], axis=2)
            if GATE is not None:
                gate = tl.load(GATE + lse_offs + o, mask=row_mask, other=0.0)
                dv += (p * gate)[:, :, None] * do
                dp = dp * gate
            else:
                dv += p[:, :, None] * do
            dk += (p * (dp - delta))[:, :, None] * q

    out_mask = (keys < length)[:, None] & col_ok[None, :]
    offs = _row_ptrs(b * sdk_b + g * sdk_h, keys, cols, sdk_l, sdk_d)
    tl.store(DK + offs, (tl.sum(dk, axis=0) * scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + offs, tl.sum(dv, axis=0).to(DV.dtype.element_ty), mask=out_mask)


def _config(length: int, group_p: int, block_d: int) -> tuple[int, int, int]:
    """(forward tile, backward tile, num_warps), from timings on an H100 (B=64, H=8, G=2, d=16,
    L=4096, bf16): 32 rows (2048 values per [group, tile, d] block) for the forward, 16 for the
    dk/dv kernel, which keeps four such blocks live per offset (with 32-64 rows it took 1.3-1.5x
    longer; no tile of 8-64 rows with 1-8 warps was faster, session 14). A tile is never longer
    than the sequence needs.
    """
    cap = max(16, min(128, triton.next_power_of_2(length)))
    values = group_p * block_d
    return max(16, min(cap, 2048 // values)), max(16, min(cap, 1024 // values)), 4


def _check(q: Tensor, k: Tensor, v: Tensor, seq_len: Tensor | None) -> None:
    """The shared GQA checks, with LTIS's head-dim limit: the dq kernel is LTIS's (tensor cores)."""
    check_gqa(q, k, v, seq_len, max_head_dim=ltis_triton.MAX_HEAD_DIM)


def launch_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, seq_len: Tensor | None) -> tuple[Tensor, Tensor]:
    """The forward kernel: (output [B, H, L, d] laid out [B, L, H, d], fp32 logsumexp [B, H, L]
    (rows < seq_len written)). seq_len as device_lengths gives it. Beside the LTIS branch, the LTIS
    forward kernel computes this branch too (ltis_triton.launch_both_forward)."""
    b, _, length, _ = q.shape
    kv_heads = k.shape[1]
    out, lse = branch_buffers(q)
    block_fwd, _, meta = _meta(q, kv_heads)
    _stis_fwd[(triton.cdiv(length, block_fwd), b * kv_heads)](
        q, k, v, out, lse, seq_len, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        length, len(reference.stis_offsets(length)), kv_heads, scale * LOG2E.value, BLOCK=block_fwd, **meta,
    )  # fmt: skip
    return out, lse


def launch_backward(
    q: Tensor, k: Tensor, v: Tensor, seq_len: Tensor | None, out: Tensor, lse: Tensor, dout: Tensor, scale: float,
    gate: tuple[Tensor, Tensor] | None = None, dq_dtype: torch.dtype | None = None,
    ltis: tuple[Tensor, Tensor, Tensor] | None = None, window_to_ltis: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """dq (in dq_dtype, else the inputs'), dk, dv from the forward's output and logsumexp, laid
    out like the output and [B, L, G, d]: the LTIS backward adds its gradients to them in place
    (no separate sum of the branches' gradients). gate: as ltis_triton.launch_backward's, for
    this branch's channels 2h + 1. ltis (with gate): (LTIS output, delta and gate buffers shaped
    like lse), for which the dq kernel writes what LTIS's prep kernel would (ltis_triton.launch_dq).
    window_to_ltis (with ltis): (delta, gates) buffers shaped like lse that the dq kernel writes this
    branch's rows to; the window and the distance 16 (10 of the 17 offsets at L = 4096) are then left
    out here, and the LTIS dk/dv kernel adds their dq, dk and dv from the products it forms for its own
    block anyway (ltis_triton.launch_backward's stis_window)."""
    b, kv_heads, length, _ = k.shape
    if ltis is not None and (gate is None or ltis[0].stride() != out.stride()):
        raise ValueError("the LTIS output is prepared only under the gate, laid out like this branch's output")
    if window_to_ltis is not None and ltis is None:
        raise ValueError("the window is left to LTIS only where this backward prepares LTIS's rows")
    dq, dk, dv = grads = empty_blhd(q, q.shape[1], dq_dtype), empty_blhd(k, kv_heads), empty_blhd(v, kv_heads)
    gl, dgl, delta, gates, gate_strides = backward_gate_args(gate, lse, window_to_ltis)
    window = window_to_ltis is None
    ltis_triton.launch_dq(q, k, v, None, seq_len, out, lse, dout, dq, delta, (gl, dgl, gates, gate_strides), scale,
                          ltis_prep=ltis, window=window)  # fmt: skip
    _, block_bwd, meta = _meta(q, kv_heads)
    _stis_bwd_dkdv[(triton.cdiv(length, block_bwd), b * kv_heads)](
        q, k, v, dout, dk, dv, lse, delta, gates, seq_len,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), length,
        0 if window else _LEFT_TO_LTIS, len(reference.stis_offsets(length)), kv_heads, scale,
        scale * LOG2E.value, BLOCK=block_bwd, **meta,
    )  # fmt: skip
    return grads


def _meta(q: Tensor, kv_heads: int) -> tuple[int, int, dict[str, int]]:
    """(forward tile, backward tile, the other compile-time parameters)."""
    length, d = q.shape[2], q.shape[3]
    group = q.shape[1] // kv_heads
    group_p, block_d = triton.next_power_of_2(group), triton.next_power_of_2(d)
    block_fwd, block_bwd, num_warps = _config(length, group_p, block_d)
    return block_fwd, block_bwd, dict(GROUP=group, GROUP_P=group_p, HEAD_DIM=d, BLOCK_D=block_d, num_warps=num_warps)


class _StisAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, the output and the fp32 logsumexp [B, H, L]."""

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, scale: float, seq_len: Tensor | None) -> Tensor:
        out, lse = launch_forward(q, k, v, scale, seq_len)
        ctx.save_for_backward(q, k, v, seq_len, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        return *launch_backward(*ctx.saved_tensors, dout, ctx.scale), None, None


def stis_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, seq_len: Tensor | None = None) -> Tensor:
    """Short-term branch, same contract as reference.stis_attention: q [B, H, L, d], k, v
    [B, G, L, d] (any strides), outputs at positions >= seq_len[b] exactly 0.

    The output is [B, H, L, d] laid out as [B, L, H, d] in memory.
    """
    _check(q, k, v, seq_len)
    return _StisAttention.apply(q, k, v, scale, device_lengths(seq_len, q.device))
