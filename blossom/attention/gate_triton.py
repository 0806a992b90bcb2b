"""The sigmoid gate that mixes the two branches, as one Triton kernel each way, and the output
projection after it.

Contract: reference.gated_merge(ltis, stis, gate_logits, weight), the projection (weight) of the
merged heads of sigmoid(gl[2h]) * ltis_h + sigmoid(gl[2h + 1]) * stis_h. In PyTorch the mix is a
sigmoid, a permute and four broadcast products forward, and their backward reductions over d
(the [B, L, H, d] -> [B, L, H] sums autograd runs for the gates): seven launches and as many full
passes over [B, L, H, d]. Here the forward reads each branch once and writes the mix; the
backward reads the mix's gradient and both branches once and writes both branch gradients, the
gate-logit gradient (sigmoid derivative included) and, over the mix's gradient it has just read,
the mix itself, which the projection's weight gradient needs. The projection is cuBLAS's.
`attend` (branches_triton) does without the backward kernel: its branches' backward kernels apply
the gates themselves, with branch_gate and store_gate_grad below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from blossom.attention.reference import merge_heads
from blossom.attention.triton_common import dot, dot_mode, empty_blhd, runs_16bit_kernel, summing_programs

_ROWS = 16  # tokens per program
# _mix_wgrad: tokens a tile, warps, programs per SM, the tiles each program must walk for it to run
# (else the gate kernel writes the mix and cuBLAS reads it back), and the widest output it takes. H100,
# B = 64, bf16, CUDA graphs, alone at L = 1024 / 2048 / 4096: 1.28x / 0.95x / 0.82x the time of those two
# steps; 64 tokens, 8 warps, one program per SM 1.20x / 1.00x / 0.92x (results/bench/README.md, session 25)
_WGRAD_ROWS, _WGRAD_WARPS, _WGRAD_PER_SM, _WGRAD_MIN_TILES, _MAX_OUT = 32, 4, 2, 12, 256


@triton.jit
def _tile(pid, n_tokens, length, heads, head_dim, ROWS: tl.constexpr, HEADS_P: tl.constexpr, D_P: tl.constexpr):
    """Index vectors of token tile pid's [ROWS, HEADS_P, D_P] elements: (token, batch, position,
    head, column, element mask, (token, head) mask)."""
    tok = pid * ROWS + tl.arange(0, ROWS)
    h = tl.arange(0, HEADS_P)
    e = tl.arange(0, D_P)
    pair_ok = (tok < n_tokens)[:, None] & (h < heads)[None, :]
    ok = pair_ok[:, :, None] & (e < head_dim)[None, None, :]
    return tok, (tok // length).to(tl.int64), tok % length, h, e, ok, pair_ok


@triton.jit
def _ptrs(X, s_b, s_h, s_l, s_d, b, pos, h, e):
    """[ROWS, HEADS_P, D_P] pointers into a [B, H, L, d] tensor of any strides."""
    return X + (b * s_b + pos * s_l)[:, None, None] + (h * s_h)[None, :, None] + (e * s_d)[None, None, :]


@triton.jit
def branch_gate(GL, s_gt, s_gc, tok, channel, ok):
    """sigmoid of the logits of tokens tok and channels channel (2h: LTIS, 2h + 1: STIS), fp32,
    tok and channel broadcast against each other (GL: [B * L, 2H] logits, token stride s_gt,
    channel stride s_gc)."""
    return tl.sigmoid(tl.load(GL + tok.to(tl.int64) * s_gt + channel * s_gc, mask=ok, other=0.0).to(tl.float32))


@triton.jit
def gate_values(GL, s_gt, s_gc, tok, h, pair_ok):
    """Both branches' gates (branch_gate) of tokens tok and heads h, [len(tok), len(h)] each."""
    g_l = branch_gate(GL, s_gt, s_gc, tok[:, None], (2 * h)[None, :], pair_ok)
    return g_l, branch_gate(GL, s_gt, s_gc, tok[:, None], (2 * h + 1)[None, :], pair_ok)


@triton.jit
def mix_tile(lt, st, g_l, g_s):
    """The gated sum of one tile, g_l * ltis + g_s * stis: gates [a, b] broadcast over the last
    axis of ltis, stis [a, b, d]."""
    return g_l[:, :, None] * lt + g_s[:, :, None] * st


@triton.jit
def store_gate_grad(DGL, s_gt, s_gc, tok, channel, ok, dmix_dot_out, g):
    """The logits' gradient of one branch, sum_d(dmix * out) * g (1 - g), given the sum (which a
    branch's backward computes anyway: its delta before the gate)."""
    tl.store(DGL + tok.to(tl.int64) * s_gt + channel * s_gc, (dmix_dot_out * g * (1 - g)).to(DGL.dtype.element_ty), mask=ok)


@triton.jit
def gated_delta(delta, GL, DGL, GATE, DELTA, s_gt, s_gc, tok, channel, ok, grad_ok, offs):
    """One branch's rows under its gate, given delta = sum_d(dmix * out): the gate g (branch_gate)
    to GATE, g * delta to DELTA (offs index both, laid out like the logsumexp; the dk/dv kernel
    reads them), the logits' gradient (store_gate_grad, where grad_ok); returns g."""
    gate = branch_gate(GL, s_gt, s_gc, tok, channel, ok)
    store_gate_grad(DGL, s_gt, s_gc, tok, channel, grad_ok, delta, gate)
    tl.store(GATE + offs, gate, mask=ok)
    tl.store(DELTA + offs, delta * gate, mask=ok)
    return gate


@triton.jit
def _gate_fwd(
    LT, ST, GL, OUT,
    sl_b, sl_h, sl_l, sl_d,
    ss_b, ss_h, ss_l, ss_d,
    so_b, so_h, so_l, so_d,
    s_gt, s_gc, n_tokens, length, heads, head_dim,
    ROWS: tl.constexpr, HEADS_P: tl.constexpr, D_P: tl.constexpr,
):  # fmt: skip
    tok, b, pos, h, e, ok, pair_ok = _tile(tl.program_id(0), n_tokens, length, heads, head_dim, ROWS, HEADS_P, D_P)
    lt = tl.load(_ptrs(LT, sl_b, sl_h, sl_l, sl_d, b, pos, h, e), mask=ok, other=0.0).to(tl.float32)
    st = tl.load(_ptrs(ST, ss_b, ss_h, ss_l, ss_d, b, pos, h, e), mask=ok, other=0.0).to(tl.float32)
    g_l, g_s = gate_values(GL, s_gt, s_gc, tok, h, pair_ok)
    out = mix_tile(lt, st, g_l, g_s)
    tl.store(_ptrs(OUT, so_b, so_h, so_l, so_d, b, pos, h, e), out.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _gate_bwd(
    LT, ST, GL, DO, DLT, DST, DGL,
    sl_b, sl_h, sl_l, sl_d,
    ss_b, ss_h, ss_l, ss_d,
    sdo_b, sdo_h, sdo_l, sdo_d,
    sg_b, sg_h, sg_l, sg_d,
    s_gt, s_gc, n_tokens, length, heads, head_dim,
    ROWS: tl.constexpr, HEADS_P: tl.constexpr, D_P: tl.constexpr,
):  # fmt: skip
    """d ltis = g_l dout, d stis = g_s dout (DLT and DST share strides sg_*), the logits'
    gradient sum_d(dout * branch) * g (1 - g) into DGL (GL's strides), and the mix over DO:
    a program writes only the tile of DO it has read, so no other program reads what it writes."""
    tok, b, pos, h, e, ok, pair_ok = _tile(tl.program_id(0), n_tokens, length, heads, head_dim, ROWS, HEADS_P, D_P)
    lt = tl.load(_ptrs(LT, sl_b, sl_h, sl_l, sl_d, b, pos, h, e), mask=ok, other=0.0).to(tl.float32)
    st = tl.load(_ptrs(ST, ss_b, ss_h, ss_l, ss_d, b, pos, h, e), mask=ok, other=0.0).to(tl.float32)
    do = tl.load(_ptrs(DO, sdo_b, sdo_h, sdo_l, sdo_d, b, pos, h, e), mask=ok, other=0.0).to(tl.float32)
    g_l, g_s = gate_values(GL, s_gt, s_gc, tok, h, pair_ok)
    grad_ptrs = _ptrs(0, sg_b, sg_h, sg_l, sg_d, b, pos, h, e)
    tl.store(DLT + grad_ptrs, (g_l[:, :, None] * do).to(DLT.dtype.element_ty), mask=ok)
    tl.store(DST + grad_ptrs, (g_s[:, :, None] * do).to(DST.dtype.element_ty), mask=ok)
    store_gate_grad(DGL, s_gt, s_gc, tok[:, None], (2 * h)[None, :], pair_ok, tl.sum(do * lt, axis=2), g_l)
    store_gate_grad(DGL, s_gt, s_gc, tok[:, None], (2 * h + 1)[None, :], pair_ok, tl.sum(do * st, axis=2), g_s)
    mix = mix_tile(lt, st, g_l, g_s)
    tl.store(_ptrs(DO, sdo_b, sdo_h, sdo_l, sdo_d, b, pos, h, e), mix.to(DO.dtype.element_ty), mask=ok)


@triton.jit
def _mix_wgrad(
    LT, ST, GL, DOUT, PART,
    sl_b, sl_h, sl_l, sl_d,
    ss_b, ss_h, ss_l, ss_d,
    s_gt, s_gc, s_dt, n_tokens, length, heads, head_dim, out_dim,
    ROWS: tl.constexpr, HEADS_P: tl.constexpr, D_P: tl.constexpr, OUT_P: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """This program's part [out_dim, heads * head_dim] (fp32, PART's row pid) of the output
    projection's weight gradient dout^T mix, over token tiles of ROWS strided by the programs: the
    mix formed from the branches and gates as _gate_fwd forms it and rounded to the branches' dtype
    as its buffer was, never stored; dout [B * L, out_dim] rows (token stride s_dt)."""
    acc = tl.zeros([OUT_P, HEADS_P * D_P], tl.float32)
    o = tl.arange(0, OUT_P)
    for tile in range(tl.program_id(0), tl.cdiv(n_tokens, ROWS), tl.num_programs(0)):
        tok, b, pos, h, e, ok, pair_ok = _tile(tile, n_tokens, length, heads, head_dim, ROWS, HEADS_P, D_P)
        lt = tl.load(_ptrs(LT, sl_b, sl_h, sl_l, sl_d, b, pos, h, e), mask=ok, other=0.0)
        st = tl.load(_ptrs(ST, ss_b, ss_h, ss_l, ss_d, b, pos, h, e), mask=ok, other=0.0)
        g_l, g_s = gate_values(GL, s_gt, s_gc, tok, h, pair_ok)
        mix = mix_tile(lt.to(tl.float32), st.to(tl.float32), g_l, g_s).to(LT.dtype.element_ty)
        dout = tl.load(DOUT + tok.to(tl.int64)[:, None] * s_dt + o[None, :],
                       mask=(tok < n_tokens)[:, None] & (o < out_dim)[None, :], other=0.0)  # fmt: skip
        acc += dot(tl.trans(dout), tl.reshape(mix, [ROWS, HEADS_P * D_P]), DOT)
    c = tl.arange(0, HEADS_P * D_P)
    h, e = c // D_P, c % D_P
    width = heads * head_dim
    part = PART + tl.program_id(0).to(tl.int64) * out_dim * width
    tl.store(part + o[:, None] * width + (h * head_dim + e)[None, :], acc,
             mask=(o < out_dim)[:, None] & ((h < heads) & (e < head_dim))[None, :])  # fmt: skip


def _launch(b: int, length: int, heads: int, head_dim: int) -> tuple[tuple[int], dict[str, int]]:
    meta = dict(ROWS=_ROWS, HEADS_P=triton.next_power_of_2(heads), D_P=triton.next_power_of_2(head_dim), num_warps=4)
    return (triton.cdiv(b * length, _ROWS),), meta


def gated_mix(ltis: Tensor, stis: Tensor, gl: Tensor) -> Tensor:
    """The gated sum [B, H, L, d] (stored [B, L, H, d]) of the branches; gl is [B * L, 2H]."""
    b, heads, length, d = ltis.shape
    out = empty_blhd(ltis, heads)
    grid, meta = _launch(b, length, heads, d)
    _gate_fwd[grid](
        ltis, stis, gl, out, *ltis.stride(), *stis.stride(), *out.stride(), *gl.stride(),
        b * length, length, heads, d, **meta,
    )  # fmt: skip
    return out


class _GatedMerge(torch.autograd.Function):
    """Gate mix, head merge and output projection. Saves the branches and the logits (the branch
    kernels' outputs, which their own backward holds anyway), not the mix: the backward kernel
    rewrites it, over the mix's gradient once read, for the projection's weight gradient. One
    [B, L, H, d] activation less per layer, and no extra pass or buffer for it."""

    @staticmethod
    def forward(ctx: FunctionCtx, ltis: Tensor, stis: Tensor, gate_logits: Tensor, weight: Tensor) -> Tensor:
        b, heads, length, _ = ltis.shape
        gl = gate_logits.reshape(b * length, 2 * heads)
        ctx.save_for_backward(ltis, stis, gl, weight)
        ctx.logits_shape = gate_logits.shape
        # the weight in the activations' dtype: what autocast does for a Linear (a no-op otherwise)
        return F.linear(merge_heads(gated_mix(ltis, stis, gl)), weight.to(ltis.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ltis, stis, gl, weight = ctx.saved_tensors
        b, heads, length, d = ltis.shape
        dout = dout.to(ltis.dtype)
        dmix_merged = dout @ weight.to(ltis.dtype)  # [B, L, H d]; holds the mix after the kernel
        dmix = dmix_merged.view(b, length, heads, d).transpose(1, 2)
        dltis, dstis = empty_blhd(ltis, heads), empty_blhd(stis, heads)
        dgl = torch.empty_like(gl)
        grid, meta = _launch(b, length, heads, d)
        _gate_bwd[grid](
            ltis, stis, gl, dmix, dltis, dstis, dgl,
            *ltis.stride(), *stis.stride(), *dmix.stride(), *dltis.stride(), *gl.stride(),
            b * length, length, heads, d, **meta,
        )  # fmt: skip
        return dltis, dstis, dgl.view(ctx.logits_shape), weight_grad(dout, dmix_merged, weight)


def logit_strides(gl: Tensor | None) -> tuple[int, int]:
    """(token, channel) strides of [B * L, 2H] logits; (0, 0) for the kernels' unused pointer."""
    return gl.stride() if gl is not None else (0, 0)


def backward_gate_args(
    gate: tuple[Tensor, Tensor] | None, lse: Tensor, rows: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor | None, ...]:
    """What a branch's backward kernels take for gate = (logits, their gradient), or None: (logits,
    gradient, the fp32 per-row delta and gate buffers a branch's first backward kernel writes for its
    dk/dv kernel, and the logits' strides, which index the gradient too). The row buffers are rows
    where the caller holds them (another branch's kernel writes them), else new, lse's shape (no
    gate buffer without the gate)."""
    if gate is None:
        gl = dgl = None
    else:
        gl, dgl = gate
        if dgl.stride() != gl.stride():
            raise ValueError(f"the logits' gradient must share their strides {gl.stride()}, got {dgl.stride()}")
    delta, gates = rows or (torch.empty_like(lse), torch.empty_like(lse) if gate is not None else None)
    return gl, dgl, delta, gates, logit_strides(gl)


def mixed_weight_grad(dout: Tensor, ltis: Tensor, stis: Tensor, gl: Tensor, weight: Tensor) -> Tensor:
    """weight_grad(dout, merge_heads(gated_mix(ltis, stis, gl)), weight). Where each program has
    _WGRAD_MIN_TILES token tiles or more (fp16/bf16 on a GPU, or the interpreter), one kernel forms
    the mix tile by tile and sums dout^T mix in fp32 parts, one per program (_mix_wgrad), then one
    sum over the parts: the mix is never written and read back."""
    b, heads, length, d = ltis.shape
    rows = dout.reshape(b * length, -1)
    out_dim = rows.shape[1]
    programs = _mix_wgrad_programs(ltis, rows)
    if not programs:
        return weight_grad(dout, merge_heads(gated_mix(ltis, stis, gl)), weight)
    part = torch.empty(programs, out_dim, heads * d, device=ltis.device, dtype=torch.float32)
    _mix_wgrad[(programs,)](
        ltis, stis, gl, rows, part, *ltis.stride(), *stis.stride(), *gl.stride(), rows.stride(0),
        b * length, length, heads, d, out_dim, ROWS=_WGRAD_ROWS, HEADS_P=triton.next_power_of_2(heads),
        D_P=triton.next_power_of_2(d), OUT_P=max(16, triton.next_power_of_2(out_dim)), DOT=dot_mode(ltis.dtype),
        num_warps=_WGRAD_WARPS, num_stages=1,
    )  # fmt: skip
    return part.sum(0).to(weight.dtype)


def _mix_wgrad_programs(ltis: Tensor, rows: Tensor) -> int:
    """_mix_wgrad's programs for dout's rows [B * L, D], or 0 where it does not run: branches in
    fp16/bf16 on a GPU (or the interpreter), rows of unit column stride no wider than _MAX_OUT, and
    _WGRAD_MIN_TILES token tiles or more per program."""
    if not runs_16bit_kernel(ltis) or rows.stride(1) != 1 or rows.shape[1] > _MAX_OUT:
        return 0
    return summing_programs(rows.shape[0], _WGRAD_ROWS, _WGRAD_PER_SM, _WGRAD_MIN_TILES, ltis.device)


def weight_grad(dout: Tensor, mix_merged: Tensor, weight: Tensor) -> Tensor:
    """The output projection's weight gradient from its output's gradient and its input, the
    merged mix [B, L, H d], in the weight's dtype."""
    return (dout.flatten(0, 1).t() @ mix_merged.flatten(0, 1)).to(weight.dtype)


def check_gate_args(shape: tuple[int, ...], gate_logits: Tensor, weight: Tensor) -> None:
    """Gate logits [B, L, 2H] and an output projection [D, H d] for branches of shape [B, H, L, d]."""
    b, heads, length, d = shape
    if gate_logits.shape != (b, length, 2 * heads):
        raise ValueError(f"need gate logits [B, L, 2H] = {(b, length, 2 * heads)}, got {tuple(gate_logits.shape)}")
    if weight.dim() != 2 or weight.shape[1] != heads * d:
        raise ValueError(f"need an output projection weight [D, {heads * d}], got {tuple(weight.shape)}")


def gated_merge(ltis: Tensor, stis: Tensor, gate_logits: Tensor, weight: Tensor) -> Tensor:
    """Same contract as reference.gated_merge: ltis, stis [B, H, L, d] (any strides, one dtype),
    gate_logits [B, L, 2H], weight [D, H d] -> [B, L, D]."""
    if stis.shape != ltis.shape or stis.dtype != ltis.dtype:
        raise ValueError(f"need ltis, stis [B, H, L, d] of one dtype; got {tuple(ltis.shape)} {ltis.dtype}, "
                         f"{tuple(stis.shape)} {stis.dtype}")
    check_gate_args(tuple(ltis.shape), gate_logits, weight)
    return _GatedMerge.apply(ltis, stis, gate_logits, weight)
