"""Head split + RoPE as one Triton kernel each way: contract reference.split_heads_rope.

The projection's output qkv [B, L, (H + 2G) d] is read once; q and k are rotated in fp32 by the
reference's own cos/sin tables (reference.rope_tables, so the angles are bit-identical) and
written, with v, as [B, L, heads, d] buffers seen as [B, heads, L, d] (the layout the attention
kernels and the head merge read). In PyTorch the same step is ~15 elementwise ops with fp32
copies per tensor, forward and backward: on an H100 at L = 4096 that glue cost more GPU time than
the attention kernels. The backward applies the inverse rotation to dq, dk (any strides, as
autograd hands them over) and writes dqkv in the projection's layout, dv copied in, so autograd
needs no split/cat of its own.

`project_split_rope` goes one step back, to the qkv projection and BlossomRec's gate projection,
which both read x: the backward kernel writes the gate logits' gradient next to dqkv, so x's
gradient is one GEMM over both projections' stacked weights, not two GEMMs and their sum. Where each
SM has a dozen token tiles or more (fp16/bf16), that kernel also sums the weights' and the bias's
gradients from the rows it writes (`_project_bwd`), and no GEMM reads them back for those. In fp16
and bf16 its forward is one kernel too (`_project_fwd`): both products on tensor cores, q and k
rotated in the epilogue, rounded as the Linears and this split round them, so x is read once and
no qkv buffer is written and read back. That kernel writes k and v head-major, [B, G, L, d]
buffers: a block of 16 keys is then 512 contiguous bytes where [B, L, G, d] spread it over twice
the cache lines, which the attention kernels' gathers of key rows pay for (`_project` gives the
times). Elsewhere (fp32 on a GPU, autocast) it runs two GEMMs and the split: one GEMM over the
stacked weights (and a stacked bias) was 4-9% slower in inference on an H100, and its stacked
weight gradient failed the tolerance rule for the gate's rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from blossom.attention import reference
from blossom.attention.side_stream import SideStream
from blossom.attention.triton_common import dot, dot_mode, reg_cap, runs_16bit_kernel, sm_count, summing_programs

_ROWS = 16  # tokens per program: [16, H d] + 2 x [16, G d] values, 3072 at the paper's shape
# The projection kernel's tokens and columns per program, warps, and programs per SM (each keeps its
# block of the weights and walks token tiles). H100, B = 64, bf16, CUDA graphs: 0.75-0.79x the
# previous kernel's time (a program per tile, reloading the weights) at L = 200-8192, 106.5 against
# 137.5 us at 4096; 4 programs per SM the fastest or within 3.3% of 5-16 at every L, which were up to
# 1.22x slower at short L; the previous kernel's K loop inside the tile loop 1.5-1.8x
# (results/bench/raw-2026-11-27-session18/). The tile is session 14's, the fastest of 28 there; one
# pipeline stage: 2 or 3 over the tile loop took 1.13-1.61x (do_bench), as over session 14's K loop
_PROJECT_ROWS, _PROJECT_COLS, _PROJECT_WARPS, _PROJECT_PER_SM = 64, 64, 4, 4
# Twice the programs where each still walks _PROJECT_MIN_TILES token tiles or more: only 4 fit an SM
# at once, and the rest start as those end, which evens out the blocks' unequal tiles (q's blocks
# store less than the last block). With the gate in the last block, alone (session 23): 8 per SM
# 0.976x / 0.951x / 0.943x the time of 4 at L = 2048 / 4096 / 8192 (B = 64), 1.03-1.07x at 200-1024
_PROJECT_PER_SM_LONG, _PROJECT_MIN_TILES = 8, 4
# the widest x the kernel takes: its x tile [64, D] and weight block [D, 64] (or [D, d]) sit in
# shared memory whole; wider models run the Linears
_PROJECT_MAX_HIDDEN = 256
# The projection kernel's registers: 178 uncapped (236 with the column blocks' branches), so 2 of the
# 4 programs per SM fit; 128 fits 4 and spills a little. H100, B = 64, bf16, alone, CUDA graphs:
# 0.88-0.92x the uncapped kernel without the branches at L = 1024-4096, 0.96x at 8192, 1.01-1.03x at
# 200-512; without the cap 0.89-0.93x and 0.98x (results/bench/README.md, session 22). With the gate
# in the last block (session 23): 138 uncapped, 120 under the cap, whose kernel took 0.96-0.99x the
# uncapped one's time at L = 200-8192
_PROJECT_MAXNREG = 128
# The projection's backward kernel (_project_bwd): tokens a tile and warps (255 registers, 8 local
# loads and stores offline on sm_90: one program an SM, which holds its fp32 sums of dy^T x), and the
# tiles each SM's program must walk for it to run (else _merge and the GEMMs). H100, B = 64, bf16, CUDA
# graphs, same process, the kernel at every L: the training step 0.985x / 0.976x / 0.980x at L = 2048 /
# 4096 / 8192, 0.998x at 1024, 1.014x / 1.037x at 512 / 200 (a few tiles a program, one after another,
# where cuBLAS spreads the GEMM); 32 tokens a tile (212 registers, none spilled) 0.990x / 0.982x / 0.983x
# (results/bench/README.md, session 25)
_WGRAD_ROWS, _WGRAD_WARPS, _WGRAD_MIN_TILES = 64, 8, 12
_TABLES: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


def _tables(length: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cached reference.rope_tables: built once per (L, d, device), outside any CUDA graph capture."""
    key = (length, dim, str(device))
    if key not in _TABLES:
        _TABLES[key] = reference.rope_tables(length, dim, device)
    return _TABLES[key]


@triton.jit
def _rotate(x, pos, COS, SIN, HALF: tl.constexpr, INVERSE: tl.constexpr):
    """Rotate the interleaved pairs of x [ROWS, W] (heads of d = 2 HALF side by side) by the
    angles of positions pos [ROWS]; INVERSE rotates back (the transpose, for the backward).
    Every (pos, pair) indexes inside the tables, so their loads need no mask."""
    rows: tl.constexpr = x.shape[0]
    width: tl.constexpr = x.shape[1]
    x1, x2 = tl.split(tl.reshape(x.to(tl.float32), [rows, width // 2, 2]))
    table = pos[:, None] * HALF + (tl.arange(0, width // 2) % HALF)[None, :]
    cos = tl.load(COS + table)
    sin = tl.load(SIN + table)
    if INVERSE:
        sin = -sin
    return tl.reshape(tl.join(x1 * cos - x2 * sin, x1 * sin + x2 * cos), [rows, width])


@triton.jit
def _split_part(SRC, s_src, DST, s_dst, tok, pos, COS, SIN, n_tokens, width,
                HALF: tl.constexpr, W_P: tl.constexpr, ROTATE: tl.constexpr):  # fmt: skip
    """Columns [0, width) of the token rows at SRC (row stride s_src) -> the rows at DST (row
    stride s_dst), rotated if ROTATE."""
    cols = tl.arange(0, W_P)
    ok = (tok < n_tokens)[:, None] & (cols < width)[None, :]
    tok64 = tok.to(tl.int64)[:, None]
    x = tl.load(SRC + tok64 * s_src + cols[None, :], mask=ok, other=0.0)
    if ROTATE:
        x = _rotate(x, pos, COS, SIN, HALF, False)
    tl.store(DST + tok64 * s_dst + cols[None, :], x.to(DST.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_fwd(
    QKV, COS, SIN, Q, K, V, s_qkv, n_tokens, length, q_width, kv_width,
    ROWS: tl.constexpr, HALF: tl.constexpr, QW_P: tl.constexpr, KVW_P: tl.constexpr,
):  # fmt: skip
    """Tokens [pid * ROWS, +ROWS) of qkv (row stride s_qkv, unit column stride) -> q, k, v
    (contiguous [B, L, heads, d]), q and k rotated."""
    tok = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    pos = tok % length
    _split_part(QKV, s_qkv, Q, q_width, tok, pos, COS, SIN, n_tokens, q_width, HALF, QW_P, True)
    _split_part(QKV + q_width, s_qkv, K, kv_width, tok, pos, COS, SIN, n_tokens, kv_width, HALF, KVW_P, True)
    _split_part(QKV + q_width + kv_width, s_qkv, V, kv_width, tok, pos, COS, SIN, n_tokens, kv_width, HALF, KVW_P,
                False)  # fmt: skip


@triton.jit
def _merge_part(G, s_b, s_h, s_l, s_d, DST, s_dst, tok, length, COS, SIN, n_tokens, width,
                HALF: tl.constexpr, W_P: tl.constexpr, ROTATE: tl.constexpr, SYNC: tl.constexpr = False):  # fmt: skip
    """A [B, heads, L, d] gradient of any strides -> columns [0, width) of the rows at DST, rotated
    back if ROTATE. SYNC: every thread of the program has read its part of the rows before any
    writes (DST over G's rows, _merge's in_place)."""
    x, ok = _load_back(G, s_b, s_h, s_l, s_d, tok, length, COS, SIN, n_tokens, width, HALF, W_P, ROTATE)
    if SYNC:
        tl.debug_barrier()
    tl.store(DST + tok.to(tl.int64)[:, None] * s_dst + tl.arange(0, W_P)[None, :], x.to(DST.dtype.element_ty), mask=ok)


@triton.jit
def _load_back(G, s_b, s_h, s_l, s_d, tok, length, COS, SIN, n_tokens, width,
               HALF: tl.constexpr, W_P: tl.constexpr, ROTATE: tl.constexpr):  # fmt: skip
    """Tokens tok's columns [0, W_P) of a [B, heads, L, d] gradient of any strides, rotated back
    if ROTATE, zeros past width, and where they exist."""
    cols = tl.arange(0, W_P)
    ok = (tok < n_tokens)[:, None] & (cols < width)[None, :]
    pos = tok % length
    row = (tok // length).to(tl.int64) * s_b + pos * s_l
    x = tl.load(G + row[:, None] + ((cols // (2 * HALF)) * s_h + (cols % (2 * HALF)) * s_d)[None, :], mask=ok, other=0.0)
    if ROTATE:
        x = _rotate(x, pos, COS, SIN, HALF, True)
    return x, ok


@triton.jit
def _rotary_bwd(
    DQ, DK, DV, COS, SIN, DQKV, DGL,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    s_out, s_dgl, n_tokens, length, q_width, kv_width, gl_width,
    ROWS: tl.constexpr, HALF: tl.constexpr, QW_P: tl.constexpr, KVW_P: tl.constexpr, GLW_P: tl.constexpr,
    IN_PLACE: tl.constexpr,
):  # fmt: skip
    """dqkv of tokens [pid * ROWS, +ROWS): dq, dk rotated back, dv as is, in the projection's
    layout; DGL (if not None; row stride s_dgl): the gate logits' gradient, in the columns after dv.
    IN_PLACE: DQKV's rows are DQ's (its fp32 token rows, which hold them): the program reads its
    tokens' dq rows whole before it writes them over."""
    tok = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    _merge_part(DQ, sq_b, sq_h, sq_l, sq_d, DQKV, s_out, tok, length, COS, SIN, n_tokens, q_width, HALF, QW_P, True,
                IN_PLACE)  # fmt: skip
    _merge_part(DK, sk_b, sk_h, sk_l, sk_d, DQKV + q_width, s_out, tok, length, COS, SIN, n_tokens, kv_width,
                HALF, KVW_P, True)  # fmt: skip
    _merge_part(DV, sv_b, sv_h, sv_l, sv_d, DQKV + q_width + kv_width, s_out, tok, length, COS, SIN, n_tokens,
                kv_width, HALF, KVW_P, False)  # fmt: skip
    if DGL is not None:
        _split_part(DGL, s_dgl, DQKV + q_width + 2 * kv_width, s_out, tok, tok, COS, SIN, n_tokens, gl_width, HALF,
                    GLW_P, False)  # fmt: skip


@triton.jit
def _project_bwd(
    DQ, DK, DV, DGL, X, COS, SIN, DY, PART,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    s_out, s_dgl, sx_t, n_tokens, length, hidden, q_width, kv_width, gl_width,
    ROWS: tl.constexpr, HALF: tl.constexpr, QW_P: tl.constexpr, KVW_P: tl.constexpr, GLW_P: tl.constexpr,
    HIDDEN_P: tl.constexpr, IN_PLACE: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """_rotary_bwd's dy rows (dq, dk rotated back, dv, the logits' gradient) for token tiles of ROWS
    strided by the programs, and from the same rows, as rounded to DY's dtype, this program's part
    of the weights' and the bias's gradients: PART [programs, width + 1, hidden] fp32, row c < width
    the sum over its tokens of dy[:, c] x (dy^T x), row width the logits' gradient summed (bias
    columns 0 .. gl_width - 1). So dy is written once and x read once, and no GEMM reads dy back
    for the weights."""
    width = q_width + 2 * kv_width + gl_width
    kk = tl.arange(0, HIDDEN_P)
    acc_q = tl.zeros([HIDDEN_P, QW_P], tl.float32)
    acc_k = tl.zeros([HIDDEN_P, KVW_P], tl.float32)
    acc_v = tl.zeros([HIDDEN_P, KVW_P], tl.float32)
    acc_g = tl.zeros([HIDDEN_P, GLW_P], tl.float32)
    bias = tl.zeros([GLW_P], tl.float32)
    gcols = tl.arange(0, GLW_P)
    for tile in range(tl.program_id(0), tl.cdiv(n_tokens, ROWS), tl.num_programs(0)):
        tok = tile * ROWS + tl.arange(0, ROWS)
        tok64 = tok.to(tl.int64)[:, None]
        x = tl.load(X + tok64 * sx_t + kk[None, :], mask=(tok < n_tokens)[:, None] & (kk < hidden)[None, :], other=0.0)
        dq, ok_q = _load_back(DQ, sq_b, sq_h, sq_l, sq_d, tok, length, COS, SIN, n_tokens, q_width, HALF, QW_P, True)
        dk, ok_k = _load_back(DK, sk_b, sk_h, sk_l, sk_d, tok, length, COS, SIN, n_tokens, kv_width, HALF, KVW_P, True)
        dv, ok_v = _load_back(DV, sv_b, sv_h, sv_l, sv_d, tok, length, COS, SIN, n_tokens, kv_width, HALF, KVW_P,
                              False)  # fmt: skip
        ok_g = (tok < n_tokens)[:, None] & (gcols < gl_width)[None, :]
        dgl = tl.load(DGL + tok64 * s_dgl + gcols[None, :], mask=ok_g, other=0.0)
        if IN_PLACE:
            tl.debug_barrier()
        dq = dq.to(DY.dtype.element_ty)
        dk = dk.to(DY.dtype.element_ty)
        dv = dv.to(DY.dtype.element_ty)
        dgl = dgl.to(DY.dtype.element_ty)
        rows = DY + tok64 * s_out
        tl.store(rows + tl.arange(0, QW_P)[None, :], dq, mask=ok_q)
        tl.store(rows + q_width + tl.arange(0, KVW_P)[None, :], dk, mask=ok_k)
        tl.store(rows + q_width + kv_width + tl.arange(0, KVW_P)[None, :], dv, mask=ok_v)
        tl.store(rows + q_width + 2 * kv_width + gcols[None, :], dgl, mask=ok_g)
        xt = tl.trans(x)
        acc_q += dot(xt, dq, DOT)
        acc_k += dot(xt, dk, DOT)
        acc_v += dot(xt, dv, DOT)
        acc_g += dot(xt, dgl, DOT)
        bias += tl.sum(dgl.to(tl.float32), axis=0)
    part = PART + tl.program_id(0).to(tl.int64) * (width + 1) * hidden
    k_ok = (kk < hidden)[:, None]
    qc = tl.arange(0, QW_P)[None, :]
    kc = tl.arange(0, KVW_P)[None, :]
    tl.store(part + qc * hidden + kk[:, None], acc_q, mask=k_ok & (qc < q_width))
    tl.store(part + (q_width + kc) * hidden + kk[:, None], acc_k, mask=k_ok & (kc < kv_width))
    tl.store(part + (q_width + kv_width + kc) * hidden + kk[:, None], acc_v, mask=k_ok & (kc < kv_width))
    tl.store(part + (q_width + 2 * kv_width + gcols[None, :]) * hidden + kk[:, None], acc_g,
             mask=k_ok & (gcols < gl_width)[None, :])  # fmt: skip
    tl.store(part + width * hidden + gcols, bias, mask=gcols < gl_width)


@triton.jit
def _project_fwd(
    X, W, WG, BG, COS, SIN, Q, K, V, GL,
    sx_t, sx_d, sw_o, sw_i, swg_o, swg_i,
    n_tokens, length, hidden, q_width, kv_width, gl_width,
    HALF: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HIDDEN_P: tl.constexpr, GL_P: tl.constexpr,
    DOT: tl.constexpr,
):  # fmt: skip
    """One block of BLOCK_N columns of x W_qkv^T, for token tiles of ROWS tokens strided by the
    programs per block, rounded to x's dtype as the Linear rounds, q's and k's columns then rotated
    as _rotary_fwd rotates them, each column stored to its buffer (q contiguous [B, L, H d], k and
    v [B, G, L, d]: _project says why); the last block also x W_gate^T + b_gate, the logits [B, L,
    gl_width], with a second product of the same x rows: a block of its own (16 logits in 64
    columns) cost as much as a block of q's (H100, B = 64, bf16, alone: this kernel 0.879x the time
    of that one at L = 4096, 0.834x at 8192, 0.88-0.96x at 200-2048; session 23). The program loads
    its weights once and keeps them; the column blocks of a token tile are consecutive programs,
    so they share its x rows in L2. A block starts at a head boundary (BLOCK_N is a multiple of d
    = 2 HALF), so _rotate's angles line up; it rotates v's columns too, which are then not used. A
    block of q's columns only skips k's and v's stores (their offsets are most of a tile's
    instructions)."""
    qkv_width = q_width + 2 * kv_width
    n_blocks = tl.cdiv(qkv_width, BLOCK_N)
    col0 = (tl.program_id(0) % n_blocks) * BLOCK_N
    col = col0 + tl.arange(0, BLOCK_N)
    last = col0 + BLOCK_N >= qkv_width
    kk = tl.arange(0, HIDDEN_P)
    k_ok = kk < hidden
    w = tl.load(W + col[None, :] * sw_o + kk[:, None] * sw_i, mask=k_ok[:, None] & (col < qkv_width)[None, :], other=0.0)
    gate_col = tl.arange(0, GL_P)
    in_gate = (gate_col < gl_width) & last
    w_gate = tl.load(WG + gate_col[None, :] * swg_o + kk[:, None] * swg_i, mask=k_ok[:, None] & in_gate[None, :],
                     other=0.0)  # fmt: skip
    bias = tl.load(BG + gate_col, mask=in_gate, other=0.0).to(tl.float32)
    d = 2 * HALF
    for tile in range(tl.program_id(0) // n_blocks, tl.cdiv(n_tokens, ROWS), tl.num_programs(0) // n_blocks):
        tok = tile * ROWS + tl.arange(0, ROWS)
        tok_ok = tok < n_tokens
        rows = tok.to(tl.int64)[:, None]
        x = tl.load(X + rows * sx_t + kk[None, :] * sx_d, mask=tok_ok[:, None] & k_ok[None, :], other=0.0)
        y = dot(x, w, DOT).to(X.dtype.element_ty)
        rotated = _rotate(y, tok % length, COS, SIN, HALF, False)
        out = tl.where((col < q_width + kv_width)[None, :], rotated, y.to(tl.float32))
        tl.store(Q + rows * q_width + col[None, :], out.to(Q.dtype.element_ty),
                 mask=tok_ok[:, None] & (col < q_width)[None, :])  # fmt: skip
        if col0 + BLOCK_N > q_width:  # k's or v's columns too
            # k's and v's offsets as a row term (b, g = 0, position) plus a column term (g, c),
            # each formed once: formed per element they took 100 registers where 96 fit 5
            # programs per SM (session 15's kernel, H100)
            kv_rows = ((tok // length).to(tl.int64) * (kv_width // d) * length + tok % length)[:, None] * d
            for part in tl.static_range(2):  # k, then v: kv_width columns each, after q's
                local = col - q_width - part * kv_width
                dst = K if part == 0 else V
                offs = kv_rows + ((local // d).to(tl.int64) * length * d + local % d)[None, :]
                tl.store(dst + offs, out.to(dst.dtype.element_ty),
                         mask=tok_ok[:, None] & ((local >= 0) & (local < kv_width))[None, :])  # fmt: skip
        if last:
            logits = (dot(x, w_gate, DOT) + bias[None, :]).to(GL.dtype.element_ty)
            tl.store(GL + rows * gl_width + gate_col[None, :], logits, mask=tok_ok[:, None] & in_gate[None, :])


def _launch_meta(n_tokens: int, n_heads: int, kv_heads: int, d: int) -> tuple[tuple[int], dict[str, int]]:
    meta = dict(ROWS=_ROWS, HALF=d // 2, QW_P=triton.next_power_of_2(n_heads * d),
                KVW_P=triton.next_power_of_2(kv_heads * d), num_warps=4)
    return (triton.cdiv(n_tokens, _ROWS),), meta


def _split(qkv: Tensor, n_heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel: qkv [B, L, (H + 2G) d] (any strides) -> q, k, v as [B, heads, L, d]
    views of [B, L, heads, d] buffers."""
    b, length, width = qkv.shape
    d = reference.head_dim(width, n_heads, kv_heads)
    rows = qkv.reshape(b * length, width)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    q, k, v = (qkv.new_empty(b, length, n, d) for n in (n_heads, kv_heads, kv_heads))
    cos, sin = _tables(length, d, qkv.device)
    grid, meta = _launch_meta(b * length, n_heads, kv_heads, d)
    _rotary_fwd[grid](rows, cos, sin, q, k, v, rows.stride(0), b * length, length, n_heads * d, kv_heads * d, **meta)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _merge(grads: tuple[Tensor | None, ...], dgl: Tensor | None, b: int, length: int, n_heads: int, kv_heads: int,
           d: int, gl_width: int, dtype: torch.dtype | None = None, reuse_dq: bool = False) -> Tensor:
    """The backward kernel: [B * L, (H + 2G) d + gl_width] rows of dqkv and then dgl [B, L, gl_width],
    in dtype (else the first gradient's). A gradient autograd does not pass (None: that output was
    not used) is zeros. reuse_dq (the caller reads dq no more): the rows go over dq's buffer where
    it can hold them (_rows_over), not into a new one."""
    grads, dgl, out, in_place = _dy_buffers(grads, dgl, b, length, (n_heads, kv_heads, d), gl_width, dtype, reuse_dq)
    cos, sin = _tables(length, d, out.device)
    grid, meta = _launch_meta(b * length, n_heads, kv_heads, d)
    _rotary_bwd[grid](
        *grads, cos, sin, out, dgl if gl_width else None, *(s for g in grads for s in g.stride()),
        out.stride(0), dgl.stride(0) if gl_width else 0, b * length, length, n_heads * d, kv_heads * d, gl_width,
        GLW_P=triton.next_power_of_2(max(gl_width, 1)), IN_PLACE=in_place, **meta,
    )  # fmt: skip
    return out


def _dy_buffers(
    grads: tuple[Tensor | None, ...], dgl: Tensor | None, b: int, length: int, heads: tuple[int, int, int],
    gl_width: int, dtype: torch.dtype | None, reuse_dq: bool,
) -> tuple[list[Tensor], Tensor | None, Tensor, bool]:
    """What the backward kernels read and write: the three gradients (zeros for None), dgl as
    [B * L, gl_width] rows of unit column stride, dy's buffer (over dq's where reuse_dq and it fits,
    _rows_over) and whether it is dq's."""
    n_heads, kv_heads, d = heads
    like = next(g for g in (*grads, dgl) if g is not None)
    grads = [g if g is not None else like.new_zeros(b, n, length, d)
             for g, n in zip(grads, (n_heads, kv_heads, kv_heads), strict=True)]
    if gl_width:
        dgl = like.new_zeros(b * length, gl_width) if dgl is None else dgl.reshape(b * length, gl_width)
        if dgl.stride(1) != 1:
            dgl = dgl.contiguous()
    width = (n_heads + 2 * kv_heads) * d + gl_width
    dtype = dtype or like.dtype
    out = _rows_over(grads[0], dtype, width) if reuse_dq else None
    in_place = out is not None
    if not in_place:
        out = like.new_empty(b * length, width, dtype=dtype)
    return grads, dgl, out, in_place


def _merge_with_weight_grads(
    grads: tuple[Tensor | None, ...], dgl: Tensor | None, x: Tensor, heads: tuple[int, int, int], gl_width: int,
    dtype: torch.dtype | None, reuse_dq: bool, programs: int,
) -> tuple[Tensor, Tensor]:
    """_merge's dy and, from the same kernel (_project_bwd, on programs programs), each program's fp32
    part [programs, width + 1, hidden] of dy^T x and of the logits' gradient summed over tokens
    (_summed_parts)."""
    b, length, hidden = x.shape
    n_heads, kv_heads, d = heads
    grads, dgl, out, in_place = _dy_buffers(grads, dgl, b, length, heads, gl_width, dtype, reuse_dq)
    rows = x.reshape(b * length, hidden)
    width = out.shape[1]
    part = torch.empty(programs, width + 1, hidden, device=x.device, dtype=torch.float32)
    cos, sin = _tables(length, d, x.device)
    _project_bwd[(programs,)](
        *grads, dgl, rows, cos, sin, out, part, *(s for g in grads for s in g.stride()), out.stride(0),
        dgl.stride(0), rows.stride(0), b * length, length, hidden, n_heads * d, kv_heads * d, gl_width,
        ROWS=_WGRAD_ROWS, HALF=d // 2, QW_P=triton.next_power_of_2(n_heads * d),
        KVW_P=triton.next_power_of_2(kv_heads * d), GLW_P=max(16, triton.next_power_of_2(gl_width)),
        HIDDEN_P=max(16, triton.next_power_of_2(hidden)), IN_PLACE=in_place, DOT=dot_mode(out.dtype),
        num_warps=_WGRAD_WARPS, num_stages=1,
    )  # fmt: skip
    return out, part


def _summed_parts(part: Tensor, qkv_width: int, gl_width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """W_qkv's, W_gate's and b_gate's gradients in dtype from _project_bwd's parts: their fp32 sum,
    rounded once."""
    sums = part.sum(0)
    dw_qkv, dw_gl = sums[:-1].to(dtype).split([qkv_width, gl_width])
    return dw_qkv, dw_gl, sums[-1, :gl_width].to(dtype)


def _rows_over(dq: Tensor, dtype: torch.dtype, width: int) -> Tensor | None:
    """[B * L, width] rows of dtype over dq's memory, or None where they do not fit: dq an fp32
    [B, L, H, d] buffer (empty_blhd's layout, the branches' dq) and dtype 2 bytes wide, so that
    token t's row lies inside t's 4 H d bytes of dq, none of another token's (the rotary backward
    kernel reads a token's dq before it writes the token's row), and width <= 2 H d. The fused
    layer's backward: no [B * L, width] buffer beside the fp32 dq (H100, B = 64, bf16, L = 4096:
    64 MiB of the training step's peak)."""
    b, heads, length, d = dq.shape
    rows_layout = (length * heads * d, d, heads * d, 1)
    if dq.dtype != torch.float32 or dtype.itemsize != 2 or dq.stride() != rows_layout or width > 2 * heads * d:
        return None
    return dq.transpose(1, 2).reshape(b * length, heads * d).view(dtype)[:, :width]


def _project_applies(x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, d: int) -> bool:
    """The projection kernel's case: fp16/bf16 on a GPU (or the interpreter, in which the CPU tests
    run it), one dtype for x and the weights, no autocast (its Linears cast first), and a head dim
    that is a power of two (blocks of columns start at head boundaries), x no wider than
    _PROJECT_MAX_HIDDEN. Otherwise the two Linears and _split run, as for fp32 on a GPU, where
    cuBLAS's fp32 GEMMs are what the reference does."""
    same_dtype = all(t.dtype == x.dtype for t in (w_qkv, w_gate, b_gate))
    too_wide = x.shape[-1] > _PROJECT_MAX_HIDDEN
    if not same_dtype or d & (d - 1) or too_wide or torch.is_autocast_enabled(x.device.type):
        return False
    return runs_16bit_kernel(x)


def _project(
    x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int, d: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The projection kernel: (*_split(F.linear(x, w_qkv), ...), F.linear(x, w_gate, b_gate)) in one
    pass over x, one launch instead of three. H100, B = 64, bf16, L = 4096: 106.5 us where the two
    GEMMs and _rotary_fwd took ~165-170 (a pass over the data would take ~60: the kernel is not at the
    memory's speed); results/bench/README.md, sessions 14 and 18.

    k and v come out head-major ([B, G, L, d] buffers; q stays [B, L, H, d], whose rows the dk/dv
    kernels gather a query's heads from at once). Same process against [B, L, G, d] (session 15,
    L = 200-8192): the forward kernel 0.91-0.94x, compression 0.86-1.01x, this kernel 1.02-1.04x,
    the STIS dq kernel 1.01-1.08x; the layer's inference step 0.947-0.961x, training's 0.984-0.996x."""
    b, length, hidden = x.shape
    rows = x.reshape(b * length, hidden)
    q = x.new_empty(b, length, n_heads, d)
    k, v = (x.new_empty(b, kv_heads, length, d) for _ in range(2))
    logits = x.new_empty(b, length, w_gate.shape[0])
    cos, sin = _tables(length, d, x.device)
    block_n = max(_PROJECT_COLS, d)
    n_blocks = triton.cdiv(w_qkv.shape[0], block_n)
    tiles = triton.cdiv(b * length, _PROJECT_ROWS)
    per_block = _programs_per_block(tiles, n_blocks, x.device)
    _project_fwd[(n_blocks * per_block,)](
        rows, w_qkv, w_gate, b_gate, cos, sin, q, k, v, logits, *rows.stride(), *w_qkv.stride(), *w_gate.stride(),
        b * length, length, hidden, n_heads * d, kv_heads * d, w_gate.shape[0],
        HALF=d // 2, ROWS=_PROJECT_ROWS, BLOCK_N=block_n, HIDDEN_P=max(16, triton.next_power_of_2(hidden)),
        GL_P=max(16, triton.next_power_of_2(w_gate.shape[0])), DOT=dot_mode(x.dtype), num_warps=_PROJECT_WARPS,
        num_stages=1, **reg_cap(_PROJECT_MAXNREG),
    )  # fmt: skip
    return q.transpose(1, 2), k, v, logits


def _programs_per_block(tiles: int, n_blocks: int, device: torch.device) -> int:
    """Programs per column block: _PROJECT_PER_SM_LONG per SM where each would still walk
    _PROJECT_MIN_TILES tiles, else _PROJECT_PER_SM per SM, no more than the tiles (1 at least)."""
    many = max(1, sm_count(device) * _PROJECT_PER_SM_LONG // n_blocks)
    if tiles >= _PROJECT_MIN_TILES * many:
        return many
    return min(tiles, max(1, sm_count(device) * _PROJECT_PER_SM // n_blocks))


class _SplitHeadsRope(torch.autograd.Function):
    """qkv [B, L, (H + 2G) d] -> rotated q [B, H, L, d], rotated k and v [B, G, L, d]."""

    @staticmethod
    def forward(ctx: FunctionCtx, qkv: Tensor, n_heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
        ctx.shape, ctx.heads = qkv.shape, (n_heads, kv_heads)
        return _split(qkv, n_heads, kv_heads)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dq: Tensor | None, dk: Tensor | None, dv: Tensor | None) -> tuple[Tensor, None, None]:
        b, length, width = ctx.shape
        n_heads, kv_heads = ctx.heads
        d = reference.head_dim(width, n_heads, kv_heads)
        return _merge((dq, dk, dv), None, b, length, n_heads, kv_heads, d, 0).view(ctx.shape), None, None


class _ProjectSplitRope(torch.autograd.Function):
    """x [B, L, D] -> rotated q, k, v as _SplitHeadsRope gives them from x W_qkv^T, and the gate
    logits x W_gate^T + b_gate [B, L, n]. The forward is the two Linears; the backward writes dqkv
    and the logits' gradient side by side (dy) and takes x's gradient as one GEMM, dy [W_qkv; W_gate]
    (the weights' and the bias's gradients run beside it on the side stream, side_stream.py):
    no second GEMM and no sum of two [B, L, D] gradients. In fp16/bf16 on a GPU the weights' gradient
    is one GEMM too, dy^T x with fp32 sums, so x is read once (H100, B = 64, bf16: the training step's
    GPU work 0.978-0.986x at L = 200-8192); in fp32 a stacked GEMM's gate rows failed the tolerance
    rule in 6 of 16 GPU shapes (2.6-2.9x the reference's error; why, I did not find out), so there
    the two GEMMs stay, as the Linears' autograd runs them. Under autocast the GEMMs run in its
    dtype, as a Linear's would (custom_fwd / custom_bwd keep the forward's autocast state)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: FunctionCtx, x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ctx.save_for_backward(x, w_qkv, w_gate)
        ctx.heads = (n_heads, kv_heads)
        return project_forward(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(
        ctx: FunctionCtx, dq: Tensor | None, dk: Tensor | None, dv: Tensor | None, dgl: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
        return *project_backward(ctx.saved_tensors, ctx.heads, (dq, dk, dv), dgl), None, None


def project_forward(
    x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """_ProjectSplitRope's forward without autograd: the projection kernel where it applies, else
    the two Linears and _split."""
    d = reference.head_dim(w_qkv.shape[0], n_heads, kv_heads)
    if _project_applies(x, w_qkv, w_gate, b_gate, d):
        return _project(x, w_qkv, w_gate, b_gate, n_heads, kv_heads, d)
    return *_split(F.linear(x, w_qkv), n_heads, kv_heads), F.linear(x, w_gate, b_gate)


def project_backward(
    saved: tuple[Tensor, Tensor, Tensor], heads: tuple[int, int], grads: tuple[Tensor | None, ...], dgl: Tensor | None,
    dtype: torch.dtype | None = None, reuse_dq: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """_ProjectSplitRope's backward from what it saves, (x, W_qkv, W_gate), and the gradients of q,
    k, v (any float dtype: the rotary backward kernel reads each in its own and writes dtype, the
    projection's outputs', else the first gradient's) and of the logits: the gradients of x, W_qkv,
    W_gate and b_gate. reuse_dq: dq's buffer is the caller's to give up (_merge)."""
    x, w_qkv, w_gate = saved
    b, length, _ = x.shape
    n_heads, kv_heads = heads
    qkv_width, gl_width = w_qkv.shape[0], w_gate.shape[0]
    d = reference.head_dim(qkv_width, n_heads, kv_heads)
    part = None  # the weights' gradient in parts, where the backward kernel sums them (_project_bwd)
    programs = _project_bwd_programs(x, w_qkv, w_gate, dtype or next(g for g in (*grads, dgl) if g is not None).dtype)
    if programs:
        dy, part = _merge_with_weight_grads(grads, dgl, x, (n_heads, kv_heads, d), gl_width, dtype, reuse_dq,
                                            programs)  # fmt: skip
    else:
        dy = _merge(grads, dgl, b, length, n_heads, kv_heads, d, gl_width, dtype, reuse_dq)
    side = SideStream(x.device)
    with side:  # part lives on to the join: the side stream reads it
        if part is None:
            dw_qkv, dw_gl, db_gate = _parameter_grads(dy, x.reshape(b * length, -1), qkv_width)
        else:
            dw_qkv, dw_gl, db_gate = _summed_parts(part, qkv_width, gl_width, dy.dtype)
    dx = (dy @ torch.cat([w_qkv, w_gate])).view(x.shape)
    side.join(dw_qkv, dw_gl, db_gate)
    return dx, dw_qkv, dw_gl, db_gate


def _project_bwd_programs(x: Tensor, w_qkv: Tensor, w_gate: Tensor, dtype: torch.dtype) -> int:
    """_project_bwd's programs (one per SM), or 0 where it does not run: it takes dy in fp16/bf16 on a
    GPU (or the interpreter), x and the weights in dy's dtype, x no wider than _PROJECT_MAX_HIDDEN,
    the gate's rows (whose bias sums share a row of the kernel's parts) no more than x's width, and
    _WGRAD_MIN_TILES token tiles or more per program."""
    if any(t.dtype != dtype for t in (x, w_qkv, w_gate)) or not runs_16bit_kernel(x):
        return 0
    if x.shape[-1] > _PROJECT_MAX_HIDDEN or w_gate.shape[0] > x.shape[-1] or x.stride(-1) != 1:
        return 0
    return summing_programs(x.numel() // x.shape[-1], _WGRAD_ROWS, 1, _WGRAD_MIN_TILES, x.device)


def _parameter_grads(dy: Tensor, rows: Tensor, qkv_width: int) -> tuple[Tensor, Tensor, Tensor]:
    """W_qkv's, W_gate's and b_gate's gradients from dy [B * L, qkv_width + gate rows] and x's rows."""
    d_gl = dy[:, qkv_width:]
    if dy.is_cuda and dy.dtype == rows.dtype and dy.dtype in (torch.float16, torch.bfloat16):
        dw_qkv, dw_gl = torch.mm(dy.t(), rows, out_dtype=torch.float32).to(dy.dtype).split([qkv_width, d_gl.shape[1]])
    else:
        dw_qkv, dw_gl = dy[:, :qkv_width].t() @ rows, d_gl.t() @ rows
    return dw_qkv, dw_gl, d_gl.sum(0)


def _check_split(width: int, n_heads: int, kv_heads: int) -> None:
    heads = n_heads + 2 * kv_heads
    if width % heads or (width // heads) % 2:
        raise ValueError(f"a qkv width of {width} is not (H + 2G) d with H={n_heads}, G={kv_heads} and an even d")


def split_heads_rope(qkv: Tensor, n_heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as reference.split_heads_rope; outputs are [B, heads, L, d] views of
    [B, L, heads, d] buffers. Needs an even head dim (RoPE rotates pairs)."""
    if qkv.dim() != 3:
        raise ValueError(f"qkv {tuple(qkv.shape)} is not [B, L, (H + 2G) d]")
    _check_split(qkv.shape[-1], n_heads, kv_heads)
    return _SplitHeadsRope.apply(qkv, n_heads, kv_heads)


def project_split_rope(
    x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as reference.project_split_rope: (*split_heads_rope(x W_qkv^T), x W_gate^T + b_gate)."""
    check_projection_args(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)
    return _ProjectSplitRope.apply(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)


def check_projection_args(x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int) -> None:
    """x [B, L, D], W_qkv [(H + 2G) d, D] with an even d, W_gate [n, D] and b_gate [n]."""
    if x.dim() != 3 or w_qkv.shape[1] != x.shape[-1] or w_gate.shape[1] != x.shape[-1] or b_gate.shape != w_gate.shape[:1]:
        raise ValueError(f"need x [B, L, D], weights [*, D] and a gate bias per gate row; got x {tuple(x.shape)}, "
                         f"{tuple(w_qkv.shape)}, {tuple(w_gate.shape)}, {tuple(b_gate.shape)}")
    _check_split(w_qkv.shape[0], n_heads, kv_heads)
