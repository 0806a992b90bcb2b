"""LTIS (long-term) attention as Triton kernels: block selection, sparse attention, backward.

Contract: reference.select_blocks(reference.block_importance(...)) and reference.ltis_attention.

Selection (`select_blocks`): one program per (query tile, batch, kv head) streams the
compressed keys in chunks of 16 blocks; column c of the chunks keeps, in registers, the sorted
top n of blocks c, c + 16, ... (compares and selects per logit, no reduction: a row's top n lies
in those lists, a column holding k of them holding them as its own top k), and the row's top n
is drawn from the 16 lists once at the end. Nothing [L, L/16] is ever written. A top-n merge per
chunk (n arg-max passes over it) took ~85% of the kernel's time before (H100, bf16, B = 64, in
the layer: 0.25 -> 0.15 ms at L = 4096, 0.86 -> 0.49 ms at 8192). The logits are fp32 sums of
exact products: for fp16 and bf16 inputs, one tensor-core dot of the group's heads side by side
(depth H/G * d) against the keys repeated, the reference's per-head logits summed; for fp32
inputs, the heads' mean first (a mean of logits is the logit of the mean query) as 3xTF32
products (each operand split into a TF32 head and tail; relative error ~1e-6). Like any other
fp32 summation order, that may order two blocks whose logits agree to ~1e-6 differently from
the reference.

From 128 blocks on (L >= 2048), selection takes a packed path first: a logit with its
mantissa's low bits replaced by its chunk's number is one fp32 key that orders as the logit
does and says which block it is, so a column's list takes a max and a min per level where the
exact lists select a value and an index beside it (the loop's instructions per chunk 274 -> 151
at L = 4096, sm_90). Where the lost bits could decide anything (two of a row's n + 1 best whose
bounds meet, or a slot's keep decision open), the tile runs the exact path too: 10 of 8192 tiles
at L = 4096 on random inputs, 82 of 16384 at 8192. Both paths give the same answer, bit for bit;
the packed one took 0.87x the time at L = 4096 and 0.78x at 8192 (H100, B = 64, bf16).

Attention (`ltis_attention`): every query attends 16 keys per selected block plus its own block
causally, one exact softmax over the union. Rows are (query, head) pairs of one GQA group, so
the group's heads share every K/V load (NSA's trick). tl.dot needs 16 rows: a program takes
16 / (H/G) queries (4 at H/G = 4); per selected slot it loads their 4 blocks as one [64, d] key
tile and scores all 16 rows against it on tensor cores; the softmax then keeps only each row's
own query's 16 columns ([16, 16]: a quarter of the exponentials) and spreads the probabilities
back for the tensor-core product with V. The own block is one [16, d] tile shared by the whole
program (a 16-aligned tile never straddles blocks). The forward stores the fp32 logsumexp; the
backward recomputes probabilities. dk/dv use an inverted index instead of atomics: the (query,
block) pairs sorted by block (ltis_index_triton: a counting sort, stable, so the sums are
deterministic), and one program per key block gathers its own block's 16 queries (causal), then
every query that selected it, in chunks of 16 queries x H/G heads:
three small tensor-core dots per chunk against the block's K and V (an atomic scatter of dk/dv would
issue B*H*L*n*16*d*2 fp32 atomics, ~4e9 at B=64, L=4096). dq comes from the same steps: a fourth dot
per chunk, its [16 H/G, d] rows added with atomics (B*H*L*(n+1)*d, ~0.17e9 at that shape) to the
fp32 dq the STIS backward has written (both branches run first STIS, then LTIS, which adds its dq,
dk and dv in place), after delta and the gates have been written: under the gate by the STIS
branch's dq kernel, which holds the same dO rows, else by a small prep kernel. That replaced a dq
kernel that walked every query's slots again, gathering K and V a second time (H100, L = 4096: 0.89
ms for dq + dk/dv, 0.59 for prep + dk/dv). There, under the gate (both branches' dO are the gates
times one mix gradient), the dk/dv kernel also takes STIS's window and its distance 16 (stis_window):
its own block's step scores the block's 16 queries once for both branches (LTIS causal, STIS at
distances 0..8), and one step more the next 16 queries (STIS at 1..8 and 16); STIS's own dk/dv and dq
kernels then start at distance 32 (10 of 17 offsets fewer at L = 4096). H100, B = 64, bf16, the
training step 0.966x / 0.976x / 0.978x / 0.982x at L = 512 / 1024 / 4096 / 8192 (results/bench/README.md,
session 24). Atomics make dq's last bits depend on the order the adds
land in; under torch.use_deterministic_algorithms that dq kernel runs instead (`_bwd_dq`,
1.16-1.22x the training step's time on an H100).

One dq kernel serves both branches (`_bwd_dq`, `launch_dq`): it walks LTIS's slots and own block,
or STIS's keys as the forward does (below), with the same tensor-core steps. For STIS it replaced a
kernel that walked the offsets on CUDA cores, 0.30 -> 0.27 ms at L = 4096 (H100, B = 64, bf16; the
training step's GPU work 0.988x at L = 4096 and 8192, 1.01x at 512 and 1024, results/bench/README.md,
session 14).

Both branches' forward (`launch_both_forward`): the forward kernel also computes the STIS branch
(stis_triton's contract) for the same rows, a second online softmax: the window's keys (one dense
tile of the keys t0 - 8 .. t0 + BLOCK_Q - 1, every distance 0..8 of the program's queries), then
its powers of two 16, 32, ... as slot tiles, query a owning W columns as a selected block's 16
(W = _far_width: the powers' count rounded up to 4, 8 or 16; one tile up to L = 2^20; with W = 16
at every L the forward alone took 1.06-1.08x as long at L = 512-4096, session 21). Under the gate
it mixes both outputs and writes the mix; for inference nothing else. On an H100 (B = 64, bf16, L = 4096) the
kernel took 0.57 ms where the LTIS forward and the STIS forward with the mix took 0.46 + 0.25; the
layer's inference step's GPU work 0.88-0.91x at L = 200-8192, training's 0.96-0.97x
(results/bench/README.md, session 13). A first version that scored all 44 STIS columns of a
program in one [16, 64] tile (64 exponentials per row, at most 17 of them in its pattern) took
0.66 ms.

Right padding: rows at or past seq_len[b] write exact zeros, load nothing, and give or receive
no gradient; tiles wholly past it skip every slot. Keys at or past seq_len are never loaded, so
NaN there cannot leak into valid outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from blossom.attention import reference
from blossom.attention.gate_triton import backward_gate_args, branch_gate, gated_delta, logit_strides
from blossom.attention.ltis_index_triton import inverted_index
from blossom.attention.triton_common import (
    LOG2E, block_d, branch_buffers, check_gqa, device_lengths, dot, dot_mode, empty_blhd, reg_cap, valid_length,
)

_BLOCK: tl.constexpr = tl.constexpr(reference.BLOCK)
_NULL_LOGIT: tl.constexpr = tl.constexpr(reference.NULL_LOGIT)
_KEEP_PROB: tl.constexpr = tl.constexpr(reference.KEEP_PROB)
_LOCAL: tl.constexpr = tl.constexpr(reference.LOCAL_WINDOW)
MAX_HEAD_DIM = 128  # [16, d] fp32 accumulators and [64, d] key tiles per warp spill beyond this
# Selection takes the packed path from this many blocks on, capped at this many registers (the exact
# path, rarely run there, spills). H100, B = 64, bf16, selection alone against the exact path, CUDA
# graphs: 0.95x at L = 2048 (128 blocks), 0.87x at 4096, 0.78x at 8192, but 1.04x at 1024, 1.1-1.2x
# at 200-512, whose tiles take a chunk or two; the cap at 72-128 registers within 2% of each other
# (results/bench/README.md, session 22)
_PACKED_MIN_BLOCKS, _SELECT_MAXNREG = 128, 72
# Register caps of the forward, dq and LTIS dk/dv kernels (one warp per program at 16-wide heads and
# 2-byte inputs, where they were measured; no cap elsewhere): 76, 74 and 168 registers uncapped, 25,
# 25 and 12 resident warps per SM; capped 28, 32 and 16. H100, B = 64, bf16, the layer as CUDA
# graphs, each cap alone: the forward at 72 inference 0.973x at L = 4096, 0.978x at 1024 (at 64:
# 0.990x / 0.997x); dq at 64 training 0.993-0.995x, dk/dv at 128 0.992-1.000x (at 96 1.05-1.10x).
# The three together: inference 0.973x, training 0.985x at 4096 (results/bench/README.md, session 22)
_FWD_MAXNREG, _DQ_MAXNREG, _DKDV_MAXNREG = 72, 64, 128
# The dk/dv kernel with STIS's window (stis_window): at 128 registers its own-block step spills
# (38 local loads and stores, offline sm_90), at 160 none; the training step 0.966x / 0.973x / 0.975x
# the code before the window moved at L = 512 / 1024 / 4096, against 0.975x / 0.982x / 0.980x capped
# at 128 (H100, B = 64, bf16, CUDA graphs; results/bench/README.md, session 24)
_DKDV_WINDOW_MAXNREG = 160
_PREP_ROWS = 256  # (query, head) rows per program of the backward's prep kernel


# --------------------------------------------------------------------------------------------
# Block selection
# --------------------------------------------------------------------------------------------


@triton.jit
def _insert(vals, idx, v, j, N: tl.constexpr):
    """Insert the chunk's logits v [M, BN] (block j) into every column's sorted list: vals and
    idx are tuples of N [M, BN] tensors, vals[0] >= vals[1] >= ... per column. Elementwise, no
    reduction: a value equal to one already listed goes behind it (that one is a lower block),
    so ties go to the lower block index. -inf (not visible) never enters."""
    new_vals = ()
    new_idx = ()
    for t in tl.static_range(N):
        beats = v > vals[t]
        if t == 0:
            new_vals = new_vals + (tl.where(beats, v, vals[t]),)
            new_idx = new_idx + (tl.where(beats, j, idx[t]),)
        else:
            moves = v > vals[t - 1]  # the entry above moves down into this place
            new_vals = new_vals + (tl.where(moves, vals[t - 1], tl.where(beats, v, vals[t])),)
            new_idx = new_idx + (tl.where(moves, idx[t - 1], tl.where(beats, j, idx[t])),)
    return new_vals, new_idx


@triton.jit
def _shift_up(lists, hit, fill, N: tl.constexpr):
    """Drop the head of the columns' lists (a tuple of N [M, BN] tensors) where hit [M, BN]: their
    other entries move up, fill comes in at the end."""
    moved = ()
    for t in tl.static_range(N):
        if t + 1 < N:
            moved = moved + (tl.where(hit, lists[t + 1], lists[t]),)
        else:
            moved = moved + (tl.where(hit, fill, lists[t]),)
    return moved


@triton.jit
def _pop(vals, idx, hit, N: tl.constexpr):
    """Drop the head of the columns' lists where hit [M, BN]: their other entries move up."""
    return _shift_up(vals, hit, float("-inf"), N), _shift_up(idx, hit, -1, N)


@triton.jit
def _row_top(vals, idx, N: tl.constexpr, N_PAD: tl.constexpr):
    """Top-N per row (scores, blocks) [M, N_PAD] from the columns' sorted lists: N times, the
    best head (ties to the lower block) is taken and its list moves up. Every row's top-N is in
    the lists: a column holding k of them holds them as its own top k. Slots left at -inf hold -1."""
    slot = tl.arange(0, N_PAD)[None, :]
    top_s = tl.full([vals[0].shape[0], N_PAD], float("-inf"), tl.float32)
    top_j = tl.full([vals[0].shape[0], N_PAD], -1, tl.int32)
    for t in tl.static_range(N):
        best = tl.max(vals[0], axis=1)
        first = vals[0] == best[:, None]
        j = tl.min(tl.where(first, idx[0], 2147483647), axis=1)
        top_s = tl.where(slot == t, best[:, None], top_s)
        top_j = tl.where(slot == t, j[:, None], top_j)
        vals, idx = _pop(vals, idx, first & (idx[0] == j[:, None]), N)
    return top_s, top_j


@triton.jit
def _chunk_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, feature, depth_ok, BLOCK_N: tl.constexpr,
                  DOT: tl.constexpr):  # fmt: skip
    """Logits [M, BLOCK_N] of the query tile (a [M, depth]) against compressed blocks j0 .. j0 +
    BLOCK_N - 1 (0 past the last block), not yet times the factor. Depth k of the product reads
    the keys' feature[k] (where depth_ok[k])."""
    j = j0 + tl.arange(0, BLOCK_N)
    ck = tl.load(ck_base + j[None, :] * sc_n + feature[:, None] * sc_d, mask=(j < num_blocks)[None, :] & depth_ok[:, None],
                 other=0.0)  # fmt: skip
    return dot(a, ck, DOT)


@triton.jit
def _visible_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, own, feature, depth_ok, factor, BLOCK_N: tl.constexpr,
                    DOT: tl.constexpr):  # fmt: skip
    """_chunk_logits times factor; -inf where a block is not visible (j >= i // 16, or past the
    last block)."""
    s = _chunk_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, feature, depth_ok, BLOCK_N, DOT) * factor
    return tl.where((j0 + tl.arange(0, BLOCK_N))[None, :] < own[:, None], s, float("-inf"))


@triton.jit
def _group_operand(Q, sq_b, sq_h, sq_l, sq_d, b, g, rows, row_ok, scale, GROUP: tl.constexpr, GROUP_P: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, STACK_HEADS: tl.constexpr):  # fmt: skip
    """The query tile's side of the logits: (a [M, depth], feature, depth_ok, factor), the logits
    being dot(a, keys' feature[k] at depth k) * factor. STACK_HEADS: the group's heads side by side
    along the depth, in the inputs' dtype; else the heads' mean, scaled, in fp32."""
    q_base = Q + b.to(tl.int64) * sq_b + rows[:, None] * sq_l
    if STACK_HEADS:
        k = tl.arange(0, GROUP_P * BLOCK_D)
        feature = k % BLOCK_D
        depth_ok = (feature < HEAD_DIM) & (k // BLOCK_D < GROUP)
        q_ptrs = q_base + (g * GROUP + k // BLOCK_D)[None, :] * sq_h + feature[None, :] * sq_d
        a = tl.load(q_ptrs, mask=row_ok[:, None] & depth_ok[None, :], other=0.0)
        factor = scale / GROUP
    else:
        feature = tl.arange(0, BLOCK_D)
        depth_ok = feature < HEAD_DIM
        q_ptrs = q_base + (g * GROUP * sq_h) + feature[None, :] * sq_d
        a = tl.zeros([rows.shape[0], BLOCK_D], tl.float32)
        for h in tl.static_range(GROUP):
            a += tl.load(q_ptrs + h * sq_h, mask=row_ok[:, None] & depth_ok[None, :], other=0.0).to(tl.float32)
        a = a * (scale / GROUP)
        factor = 1.0
    return a, feature, depth_ok, factor


@triton.jit
def _decided(rel_lo, rel_hi, bound):
    """(kept, open) per slot from bounds on its probability relative to the max with the null
    logit, rel_lo <= exp(s - m) <= rel_hi, and on the softmax denominator relative to it, 1 <=
    denom <= bound (visible blocks + 1): kept iff the probability is > KEEP_PROB for any
    denominator, open where the bounds do not decide. The margins (1e-3) dwarf fp32 rounding."""
    keep = rel_lo > _KEEP_PROB * 1.001 * bound
    return keep, (rel_hi > _KEEP_PROB * 0.999) & ~keep


@triton.jit
def _exact_top(a, ck_base, sc_n, sc_d, num_blocks, own, last, feature, depth_ok, factor, N: tl.constexpr,
               N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr):  # fmt: skip
    """The query tile's slots [M, N_PAD] (blocks, -1 unused) from blocks 0 .. last - 1: column c
    of the chunks keeps the sorted top N of blocks c, c + BLOCK_N, ... as values and indices
    (_insert; the module docstring says why), the rows' top N drawn from the columns once, after
    the loop."""
    vals = (tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32),) * N
    idx = (tl.full([BLOCK_M, BLOCK_N], -1, tl.int32),) * N
    for j0 in range(0, last, BLOCK_N):
        s = _visible_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, own, feature, depth_ok, factor, BLOCK_N, DOT)
        vals, idx = _insert(vals, idx, s, j0 + tl.arange(0, BLOCK_N)[None, :], N)
    m = tl.maximum(tl.max(vals[0], axis=1), _NULL_LOGIT)  # the max, with the null logit
    top_s, top_j = _row_top(vals, idx, N, N_PAD)

    # A slot is kept iff its probability exp(s - m) / denom > KEEP_PROB, denom being the softmax
    # denominator relative to the max (null logit included). The bounds on denom decide almost
    # every slot, so the exponentials of all the logits (one per logit) are only computed, in a
    # second pass, for a tile with a slot the bounds leave open.
    rel = tl.exp(top_s - m[:, None])
    keep, open_slot = _decided(rel, rel, (tl.minimum(own, num_blocks) + 1).to(tl.float32)[:, None])
    if tl.max(open_slot.to(tl.int32)) > 0:
        denom = tl.exp(_NULL_LOGIT - m)
        for j0 in range(0, last, BLOCK_N):
            s = _visible_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, own, feature, depth_ok, factor, BLOCK_N, DOT)
            denom += tl.sum(tl.exp(s - m[:, None]), axis=1)
        keep = rel / denom[:, None] > _KEEP_PROB
    return tl.where(keep, top_j, -1)


@triton.jit
def _absorb(keys, s, low, low_mask, visible, LEVELS: tl.constexpr):
    """Insert the chunk's logits s [M, BN] into every column's sorted list (keys: LEVELS [M, BN]
    tensors, keys[0] >= keys[1] >= ...) as packed keys: s with its mantissa's low bits (low_mask)
    replaced by low, which says the chunk (the column says the rest of the block index). One
    compare-exchange (a max and a min) per level; -inf and blocks not visible (visible [M, BN],
    None: all are) never enter. A NaN logit (NaN inputs) is dropped by a GPU's max and min, which
    repeats its column's head; the repeat's bounds meet, so the row comes out unsure and the exact
    path, which never takes a NaN, answers. (The interpreter's max and min keep NaN instead.)"""
    s = tl.minimum(s, 3.4028234663852886e38, propagate_nan=tl.PropagateNan.ALL)  # +inf would pack into a NaN
    packed = ((s.to(tl.int32, bitcast=True) & ~low_mask) | low).to(tl.float32, bitcast=True)
    carry = packed if visible is None else tl.where(visible, packed, float("-inf"))
    kept = ()
    for t in tl.static_range(LEVELS):
        kept = kept + (tl.maximum(keys[t], carry),)
        if t + 1 < LEVELS:
            carry = tl.minimum(keys[t], carry)
    return kept


@triton.jit
def _ranked(keys, low_mask, factor, LEVELS: tl.constexpr, BLOCK_N: tl.constexpr):
    """The rows' LEVELS best packed keys from the columns' lists, best first, as tuples of [M]
    tensors: the block (-1 where none is left) and bounds lo <= hi on its logit times factor (a
    key is exact above its low bits). A key held by two columns is taken from the first."""
    col = tl.arange(0, BLOCK_N)[None, :]
    blocks = ()
    lows = ()
    highs = ()
    for t in tl.static_range(LEVELS):
        best = tl.max(keys[0], axis=1)
        c = tl.min(tl.where(keys[0] == best[:, None], col, BLOCK_N), axis=1)
        keys = _shift_up(keys, col == c[:, None], float("-inf"), LEVELS)
        bits = best.to(tl.int32, bitcast=True)
        ends = ((bits & ~low_mask).to(tl.float32, bitcast=True), (bits | low_mask).to(tl.float32, bitcast=True))
        some = best > float("-inf")
        blocks = blocks + (tl.where(some, (low_mask ^ (bits & low_mask)) * BLOCK_N + c, -1),)
        lows = lows + (tl.where(some, tl.minimum(ends[0], ends[1]) * factor, float("-inf")),)
        highs = highs + (tl.where(some, tl.maximum(ends[0], ends[1]) * factor, float("-inf")),)
    return blocks, lows, highs


@triton.jit
def _packed_top(a, ck_base, sc_n, sc_d, num_blocks, own, last, whole, feature, depth_ok, factor, low_mask,
                N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                DOT: tl.constexpr):  # fmt: skip
    """_exact_top's answer, where rounding cannot change it, and unsure [M]: rows where it might.

    Each column keeps its top N + 1 as packed keys (_absorb): a compare-exchange per level where
    _insert selects a value and an index. The keys' order is the logits' order wherever their
    mantissas differ above the low bits; a row is unsure where two of its N + 1 best might not
    differ so (their bounds meet: near-ties, exact ties, +0 and -0), or where the bounds on a
    slot's probability do not decide it (the exact path then sums the denominator). Chunks
    before whole are visible to every row: no mask."""
    keys = (tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32),) * (N + 1)
    for j0 in range(0, whole, BLOCK_N):
        s = _chunk_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, feature, depth_ok, BLOCK_N, DOT)
        keys = _absorb(keys, s, low_mask ^ (j0 // BLOCK_N), low_mask, None, N + 1)
    for j0 in range(whole, last, BLOCK_N):
        s = _chunk_logits(a, ck_base, sc_n, sc_d, j0, num_blocks, feature, depth_ok, BLOCK_N, DOT)
        visible = (j0 + tl.arange(0, BLOCK_N))[None, :] < own[:, None]
        keys = _absorb(keys, s, low_mask ^ (j0 // BLOCK_N), low_mask, visible, N + 1)
    blocks, lows, highs = _ranked(keys, low_mask, factor, N + 1, BLOCK_N)

    m_lo = tl.maximum(lows[0], _NULL_LOGIT)
    m_hi = tl.maximum(highs[0], _NULL_LOGIT)
    bound = (tl.minimum(own, num_blocks) + 1).to(tl.float32)
    slot = tl.arange(0, N_PAD)[None, :]
    top = tl.full([BLOCK_M, N_PAD], -1, tl.int32)
    unsure = own < 0
    for t in tl.static_range(N):
        keep, open_slot = _decided(tl.exp(lows[t] - m_hi), tl.exp(highs[t] - m_lo), bound)
        unsure = unsure | open_slot | ((blocks[t + 1] >= 0) & (lows[t] <= highs[t + 1]))
        top = tl.where(slot == t, tl.where(keep, blocks[t], -1)[:, None], top)
    return top, unsure


@triton.jit
def _select_fwd(
    Q, CK, OUT, REDONE,
    sq_b, sq_h, sq_l, sq_d,
    sc_b, sc_g, sc_n, sc_d,
    length, num_blocks, kv_heads, scale, low_mask,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, N: tl.constexpr,
    N_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr, STACK_HEADS: tl.constexpr,
    PACKED: tl.constexpr,
):  # fmt: skip
    """Top-N visible blocks of a query tile x (batch, kv head) -> OUT [B, G, L, N] (int32, -1 unused).

    PACKED: _packed_top, and _exact_top for the tile where a row is unsure (REDONE[program] = 1
    then, else 0, where REDONE is given); else _exact_top alone. STACK_HEADS (fp16/bf16 inputs):
    the group's heads side by side along the product's depth against the keys repeated, one dot in
    the inputs' dtype, products exact (fp32 sums, as the reference's per-head logits); else the
    heads' mean in fp32, whose products are 3xTF32."""
    tile = tl.program_id(0)
    b = tl.program_id(1) // kv_heads
    g = tl.program_id(1) % kv_heads
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    a, feature, depth_ok, factor = _group_operand(Q, sq_b, sq_h, sq_l, sq_d, b, g, rows, row_ok, scale, GROUP, GROUP_P,
                                                  HEAD_DIM, BLOCK_D, STACK_HEADS)  # fmt: skip
    ck_base = CK + b.to(tl.int64) * sc_b + g * sc_g
    own = rows // _BLOCK  # block j is visible to query i iff 16j + 15 < i, i.e. j < i // 16
    last = tl.minimum(num_blocks, (tl.minimum((tile + 1) * BLOCK_M, length) - 1) // _BLOCK)
    top = tl.full([BLOCK_M, N_PAD], -1, tl.int32)
    redo = 1
    if PACKED:
        whole = (tile * BLOCK_M // _BLOCK) // BLOCK_N * BLOCK_N
        top, unsure = _packed_top(a, ck_base, sc_n, sc_d, num_blocks, own, last, whole, feature, depth_ok, factor,
                                  low_mask, N, N_PAD, BLOCK_M, BLOCK_N, DOT)  # fmt: skip
        redo = tl.max((unsure & row_ok).to(tl.int32))
        if REDONE is not None:
            tl.store(REDONE + tl.program_id(1) * tl.num_programs(0) + tile, redo)
    if redo > 0:
        top = _exact_top(a, ck_base, sc_n, sc_d, num_blocks, own, last, feature, depth_ok, factor, N, N_PAD, BLOCK_M,
                         BLOCK_N, DOT)  # fmt: skip
    slot = tl.arange(0, N_PAD)
    out_ptrs = OUT + ((b * kv_heads + g).to(tl.int64) * length + rows[:, None]) * N + slot[None, :]
    tl.store(out_ptrs, top, mask=row_ok[:, None] & (slot < N)[None, :])


def _select_tiles(length: int, num_blocks: int) -> tuple[int, int]:
    """(queries, blocks) per step, 16 at least (tl.dot). Blocks are the columns whose lists a
    program keeps (2 n registers per column and row): H100, B = 64, bf16, 4 warps, L = 4096
    (8192): [64, 16] 0.19 (0.54) ms, [128, 16] 0.21 (0.58), [64, 32] 0.25 (0.65), [32, 16] 0.26
    (0.72), [128, 32] and [64, 64] 0.72-0.80 (2.2: spilled). Tests shrink these to exercise the
    chunked loop."""
    return min(64, max(16, triton.next_power_of_2(length))), 16


def _stacks_heads(q: Tensor, ck: Tensor) -> bool:
    """Whether selection multiplies the group's heads side by side (fp16/bf16 q and ck, exact
    products) rather than their fp32 mean (3xTF32). Faster at every head dim measured despite
    the H/G times deeper product (H100, bf16, B = 64, H/G = 4, L = 4096: 0.57-0.82x the mean's
    time at d = 16-128)."""
    return q.dtype in (torch.float16, torch.bfloat16) and ck.dtype == q.dtype


def select_blocks(q: Tensor, ck: Tensor, scale: float, num_selected: int = reference.NUM_SELECTED) -> Tensor:
    """Top-n blocks per query and kv head, as reference.select_blocks(block_importance(q, ck)).

    q [B, H, L, d], ck [B, G, L // 16, d] (any strides). Returns int32 [B, G, L, n],
    n = min(num_selected, L // 16); -1 marks an unused slot. No gradient.
    """
    return _selection(q, ck, scale, num_selected, packed=ck.shape[2] >= _PACKED_MIN_BLOCKS)


def _selection(q: Tensor, ck: Tensor, scale: float, num_selected: int, packed: bool,
               redone: Tensor | None = None) -> Tensor:  # fmt: skip
    """select_blocks by the packed path (the exact one where it is unsure) or the exact path alone;
    redone (int32, a slot per program, packed only): which tiles the packed path left to the exact
    one."""
    b, h, length, d = q.shape
    kv_heads, num_blocks = ck.shape[1], ck.shape[2]
    if ck.shape[0] != b or ck.shape[3] != d or h % kv_heads or num_blocks != length // reference.BLOCK:
        raise ValueError(f"q {tuple(q.shape)} and ck {tuple(ck.shape)} do not match")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be <= {MAX_HEAD_DIM}, got {d}")
    n = min(num_selected, num_blocks)
    out = torch.empty(b, kv_heads, length, n, device=q.device, dtype=torch.int32)
    if n == 0:
        return out
    block_m, block_n = _select_tiles(length, num_blocks)
    stack = _stacks_heads(q, ck)
    chunks = triton.cdiv(num_blocks, block_n)  # the packed keys' low bits count them
    _select_fwd[(triton.cdiv(length, block_m), b * kv_heads)](
        q, ck, out, redone, *q.stride(), *ck.stride(), length, num_blocks, kv_heads, scale,
        (1 << max(1, (chunks - 1).bit_length())) - 1,
        GROUP=h // kv_heads, GROUP_P=triton.next_power_of_2(h // kv_heads), HEAD_DIM=d, BLOCK_D=block_d(d), N=n,
        N_PAD=triton.next_power_of_2(n), BLOCK_M=block_m, BLOCK_N=block_n,
        DOT=dot_mode(q.dtype if stack else torch.float32), STACK_HEADS=stack, PACKED=packed, num_warps=4,
        **reg_cap(_SELECT_MAXNREG if packed else None),
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Sparse attention over the selected blocks + the causal own block
# --------------------------------------------------------------------------------------------


@triton.jit
def _query_rows(tile, g, BLOCK_Q: tl.constexpr, GROUP: tl.constexpr, GROUP_P: tl.constexpr):
    """Rows of a query tile: (query, head) pairs, the group's heads of one query adjacent."""
    r = tl.arange(0, BLOCK_Q * GROUP_P)
    return tile * BLOCK_Q + r // GROUP_P, g * GROUP + r % GROUP_P, r % GROUP_P < GROUP


@triton.jit
def _query_program(SEQ_LEN, length, kv_heads, GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_Q: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """What a program of BLOCK_Q queries x (batch, kv head) covers: (tile, b, g, the valid length,
    its rows' queries and heads, head_ok (a real head), row_ok (and a query < seq_len), the
    columns and col_ok [1, BLOCK_D])."""
    tile = tl.program_id(0)
    b = tl.program_id(1) // kv_heads
    g = tl.program_id(1) % kv_heads
    n_valid = valid_length(SEQ_LEN, b, length)
    queries, heads, head_ok = _query_rows(tile, g, BLOCK_Q, GROUP, GROUP_P)
    cols = tl.arange(0, BLOCK_D)
    return tile, b, g, n_valid, queries, heads, head_ok, head_ok & (queries < n_valid), cols, cols[None, :] < HEAD_DIM


@triton.jit
def _row_ptrs(base, heads, queries, cols, s_h, s_l, s_d):
    """Pointers [rows, d] into an [H, L, d] slice at (heads, queries). Row offsets are formed
    before broadcasting: 2-D integer arithmetic is what the interpreter is slowest at."""
    return (base + heads * s_h + queries * s_l)[:, None] + (cols * s_d)[None, :]


@triton.jit
def _slot_blocks(idx_base, s_il, s_it, owner, t, n_valid):
    """The block selected in slot t by queries owner (any shape; -1 for none, or past seq_len)."""
    return tl.load(idx_base + owner * s_il + t * s_it, mask=owner < n_valid, other=-1)


@triton.jit
def _slot_keys(idx_base, s_il, s_it, tile, t, n_valid, BLOCK_Q: tl.constexpr):
    """Keys [BLOCK_Q * 16, 1] of selected slot t for the tile's queries, query a owning rows
    16a .. 16a + 15 of the key tile, and their mask (slot -1, or keys past seq_len, give none).
    A column, whose products with the strides _kv_rows forms before any pointer, built from the
    queries' blocks [BLOCK_Q, 1, 1]: from a 1-D index the compiler formed K's and V's 64-bit row
    pointers and then moved each between lanes into the key tile's layout (two shuffles per
    pointer); from an index column it moved the offsets and the mask (the forward's slot step
    302 against 336 SASS instructions); from the queries' blocks nothing moves (298, 8 shuffles
    of 26 left, all K's; offline sm_90 compiles, bf16, H/G = 4, d = 16)."""
    blk = _slot_blocks(idx_base, s_il, s_it, tile * BLOCK_Q + tl.arange(0, BLOCK_Q)[:, None, None], t, n_valid)
    keys = blk * _BLOCK + tl.arange(0, _BLOCK)[None, :, None]
    ok = (blk >= 0) & (keys < n_valid)
    return tl.reshape(keys, [BLOCK_Q * _BLOCK, 1]), tl.reshape(ok, [BLOCK_Q * _BLOCK, 1])


@triton.jit
def _kv_rows(k_base, v_base, keys, key_ok, cols, col_ok, sk_l, sk_d, sv_l, sv_d):
    """K and V rows [N, BLOCK_D] of one kv head at keys [N, 1]; rows where key_ok [N, 1] is False
    are zeros, never loaded. Offsets, not pointers, are formed first (see _slot_keys)."""
    mask = key_ok & col_ok
    k = tl.load(k_base + (keys * sk_l + (cols * sk_d)[None, :]), mask=mask, other=0.0)
    v = tl.load(v_base + (keys * sv_l + (cols * sv_d)[None, :]), mask=mask, other=0.0)
    return k, v


@triton.jit
def _owned(BLOCK_Q: tl.constexpr):
    """[BLOCK_Q, 1, BLOCK_Q, 1] mask: query a owns the slot tile's columns W a .. W a + W - 1."""
    a = tl.arange(0, BLOCK_Q)
    return a[:, None, None, None] == a[None, None, :, None]


@triton.jit
def _own(x, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr, W: tl.constexpr):
    """[rows, BLOCK_Q * W] slot-tile scores -> [rows, W]: each row's own query's columns
    (row r is query r // GROUP_P's). What the softmax then works on: at 4 queries per program,
    a quarter of the tile's exponentials, which are what a slot step spends its time on."""
    x4 = tl.reshape(x, [BLOCK_Q, GROUP_P, BLOCK_Q, W])
    return tl.reshape(tl.sum(tl.where(_owned(BLOCK_Q), x4, 0.0), axis=2), [BLOCK_Q * GROUP_P, W])


@triton.jit
def _spread(x, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr, W: tl.constexpr):
    """_own's inverse: [rows, W] -> [rows, BLOCK_Q * W], zero outside each row's own columns
    (the operand of the tile-wide tensor-core product with V or K)."""
    x4 = tl.reshape(x, [BLOCK_Q, GROUP_P, 1, W])
    return tl.reshape(tl.where(_owned(BLOCK_Q), x4, 0.0), [BLOCK_Q * GROUP_P, BLOCK_Q * W])


@triton.jit
def _fwd_step(m, denom, acc, q, k, v, mask, qk_scale,
              DOT: tl.constexpr, SLOT: tl.constexpr, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr):
    """Online-softmax update of rows q [M, d] with keys k, v [N, d]. The own block: mask [M, N]
    (SLOT = 0). A slot tile of SLOT keys per query: mask [M, SLOT] over each row's own columns
    (_own)."""
    s = dot(q, tl.trans(k), DOT)
    if SLOT:
        s = _own(s, BLOCK_Q, GROUP_P, SLOT)
    s = tl.where(mask, s * qk_scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    denom = denom * alpha + tl.sum(p, axis=1)
    if SLOT:
        p = _spread(p, BLOCK_Q, GROUP_P, SLOT)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT)
    return m_new, denom, acc


@triton.jit
def _dq_step(dq, q, do, k, v, mask, lse, delta, qk_scale,
             DOT: tl.constexpr, SLOT: tl.constexpr, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr):
    """Add the contribution of keys k, v [N, d] to dq [M, d] (unscaled); mask as _fwd_step's."""
    s = dot(q, tl.trans(k), DOT)
    dp = dot(do, tl.trans(v), DOT)
    if SLOT:
        s = _own(s, BLOCK_Q, GROUP_P, SLOT)
        dp = _own(dp, BLOCK_Q, GROUP_P, SLOT)
    p = tl.where(mask, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
    ds = p * (dp - delta[:, None])
    if SLOT:
        ds = _spread(ds, BLOCK_Q, GROUP_P, SLOT)
    return dq + dot(ds.to(k.dtype), k, DOT)


@triton.jit
def _row_mask(ok, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr, W: tl.constexpr):
    """A slot tile's key mask [BLOCK_Q * W] as the [rows, W] mask of each row's own keys."""
    ok3 = tl.broadcast_to(tl.reshape(ok, [BLOCK_Q, 1, W]), [BLOCK_Q, GROUP_P, W])
    return tl.reshape(ok3, [BLOCK_Q * GROUP_P, W])


@triton.jit
def _stis_near_keys(t0, n_valid, BLOCK_Q: tl.constexpr, NEAR_P: tl.constexpr):
    """Keys t0 - 8 .. t0 + BLOCK_Q - 1 [NEAR_P] (every distance 0 .. 8 of queries t0 .. t0 +
    BLOCK_Q - 1: STIS's window and its first power of two) and where they exist."""
    c = tl.arange(0, NEAR_P)
    keys = t0 - _LOCAL + c
    return keys, (c < BLOCK_Q + _LOCAL) & (keys >= 0) & (keys < n_valid)


@triton.jit
def _stis_far_keys(tile, step, first, n_far, BLOCK_Q: tl.constexpr, W: tl.constexpr):
    """STIS's keys at distances 16, 32, ... as a slot tile [BLOCK_Q * W] (query a owning columns
    W a .. W a + W - 1): the distances 16 << j, j = first + W step .. first + W step + W - 1, of the
    n_far below L, and where they exist (keys < 0 do not; every key is below t0 <= seq_len, since
    BLOCK_Q <= 16)."""
    c = tl.arange(0, BLOCK_Q * W)
    j = first + step * W + c % W
    keys = tile * BLOCK_Q + c // W - ((2 * _LOCAL) << tl.minimum(j, 26))
    return keys, (j < n_far) & (keys >= 0)


@triton.jit
def _stis_near_tile(k_base, v_base, tile, n_valid, queries, row_ok, cols, col_ok, sk_l, sk_d, sv_l, sv_d,
                    BLOCK_Q: tl.constexpr, NEAR_P: tl.constexpr):  # fmt: skip
    """K, V [NEAR_P, BLOCK_D] of the window's keys (_stis_near_keys) and the rows' mask over them:
    distances 0 .. 8 that exist, for rows < seq_len. The one place the forward and the dq kernel
    read STIS's window from."""
    keys, ok = _stis_near_keys(tile * BLOCK_Q, n_valid, BLOCK_Q, NEAR_P)
    k, v = _kv_rows(k_base, v_base, keys[:, None], ok[:, None], cols, col_ok, sk_l, sk_d, sv_l, sv_d)
    gap = queries[:, None] - keys[None, :]
    return k, v, (gap >= 0) & (gap <= _LOCAL) & ok[None, :] & row_ok[:, None]


@triton.jit
def _stis_far_tile(k_base, v_base, tile, step, first, n_far, row_ok, cols, col_ok, sk_l, sk_d, sv_l, sv_d,
                   BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr, W: tl.constexpr):  # fmt: skip
    """K, V [BLOCK_Q * W, BLOCK_D] of slot tile `step` of STIS's powers of two (_stis_far_keys)
    and each row's [rows, W] mask over its own columns, for rows < seq_len."""
    keys, ok = _stis_far_keys(tile, step, first, n_far, BLOCK_Q, W)
    k, v = _kv_rows(k_base, v_base, keys[:, None], ok[:, None], cols, col_ok, sk_l, sk_d, sv_l, sv_d)
    return k, v, _row_mask(ok, BLOCK_Q, GROUP_P, W) & row_ok[:, None]


@triton.jit
def _ltis_slot_tile(k_base, v_base, idx_base, s_il, s_it, tile, t, n_valid, row_ok, cols, col_ok, sk_l, sk_d, sv_l,
                    sv_d, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr):  # fmt: skip
    """K, V and rows' mask of LTIS's selected slot t (_slot_keys) as a slot tile. The one place the
    forward and the dq kernel read a selected block from."""
    keys, ok = _slot_keys(idx_base, s_il, s_it, tile, t, n_valid, BLOCK_Q)
    k, v = _kv_rows(k_base, v_base, keys, ok, cols, col_ok, sk_l, sk_d, sv_l, sv_d)
    return k, v, _slot_row_mask(idx_base, s_il, s_it, tile, t, n_valid, BLOCK_Q, GROUP_P) & row_ok[:, None]


@triton.jit
def _slot_row_mask(idx_base, s_il, s_it, tile, t, n_valid, BLOCK_Q: tl.constexpr, GROUP_P: tl.constexpr):
    """Each row's mask [rows, 16] over its own keys of selected slot t, from the rows' own read of
    the index (row r is query r // GROUP_P's), in the layout of the scores: _row_mask of the key
    tile's mask moved it between lanes."""
    r = tl.arange(0, BLOCK_Q * GROUP_P)[:, None]
    blk = _slot_blocks(idx_base, s_il, s_it, tile * BLOCK_Q + r // GROUP_P, t, n_valid)
    return (blk >= 0) & (blk * _BLOCK + tl.arange(0, _BLOCK)[None, :] < n_valid)


@triton.jit
def _own_block_tile(k_base, v_base, tile, n_valid, queries, row_ok, cols, col_ok, sk_l, sk_d, sv_l, sv_d,
                    BLOCK_Q: tl.constexpr):  # fmt: skip
    """K, V [16, BLOCK_D] of the block holding the tile's queries (a 16-aligned tile never
    straddles two) and the rows' causal mask over it, for rows < seq_len: LTIS's diagonal, in the
    forward and the dq kernel."""
    keys = (tile * BLOCK_Q // _BLOCK) * _BLOCK + tl.arange(0, _BLOCK)
    k, v = _kv_rows(k_base, v_base, keys[:, None], (keys < n_valid)[:, None], cols, col_ok, sk_l, sk_d, sv_l, sv_d)
    return k, v, row_ok[:, None] & (keys[None, :] <= queries[:, None])


@triton.jit
def _normalise(acc, denom, row_ok):
    """(output rows acc / denom, exact zeros where not row_ok; the denominators, 1 there). One
    division per row and a product per element: a division per element cost ~5 instructions
    (fp32 division's range scaling), ~60 of the inference forward kernel's ~260 after its loops."""
    denom = tl.where(row_ok, denom, 1.0)
    return tl.where(row_ok[:, None], acc * (1.0 / denom)[:, None], 0.0), denom


@triton.jit
def _ltis_fwd(
    Q, K, V, IDX, SEQ_LEN, O, LSE, SO, SLSE, GL, MIX,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_g, sk_l, sk_d,
    sv_b, sv_g, sv_l, sv_d,
    si_b, si_g, si_l, si_t,
    so_b, so_h, so_l, so_d,
    s_gt, s_gc, length, n_slots, n_far, kv_heads, qk_scale,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr, STIS: tl.constexpr, NEAR_P: tl.constexpr,
    FAR_W: tl.constexpr,
):  # fmt: skip
    """BLOCK_Q queries x (batch, kv head): O and the logsumexp LSE (log2 units) by an online
    softmax over the selected slots, then the own block. STIS: the short-term branch of the same
    rows as well, its own softmax over the window's keys (_stis_near_keys) and then its n_far
    powers of two as slots (_stis_far_keys), its output to SO and logsumexp (natural log, as
    stis_triton's) to SLSE; with MIX, both outputs mixed by the gates of GL ([B * L, 2H] logits)
    as gate_triton's kernel mixes the stored outputs. O, LSE, SO and SLSE may then be None
    (inference writes only the mix). O, SO and MIX share strides so_*."""
    tile, b, g, n_valid, queries, heads, head_ok, row_ok, cols, col_ok = _query_program(
        SEQ_LEN, length, kv_heads, GROUP, GROUP_P, BLOCK_Q, HEAD_DIM, BLOCK_D)
    b64 = b.to(tl.int64)
    q = tl.load(_row_ptrs(Q + b64 * sq_b, heads, queries, cols, sq_h, sq_l, sq_d), mask=row_ok[:, None] & col_ok, other=0.0)
    k_base = K + b64 * sk_b + g * sk_g
    v_base = V + b64 * sv_b + g * sv_g
    idx_base = IDX + b64 * si_b + g * si_g

    m = tl.full([BLOCK_Q * GROUP_P], -1.0e30, tl.float32)  # finite: fully masked slots stay NaN-free
    denom = tl.zeros([BLOCK_Q * GROUP_P], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_P, BLOCK_D], tl.float32)
    m_s, denom_s, acc_s = m, denom, acc
    if tile * BLOCK_Q < n_valid:  # tiles past seq_len skip everything
        for t in range(n_slots):
            k, v, mask = _ltis_slot_tile(k_base, v_base, idx_base, si_l, si_t, tile, t, n_valid, row_ok, cols, col_ok,
                                         sk_l, sk_d, sv_l, sv_d, BLOCK_Q, GROUP_P)  # fmt: skip
            m, denom, acc = _fwd_step(m, denom, acc, q, k, v, mask, qk_scale, DOT, _BLOCK, BLOCK_Q, GROUP_P)
        k, v, mask = _own_block_tile(k_base, v_base, tile, n_valid, queries, row_ok, cols, col_ok, sk_l, sk_d, sv_l,
                                     sv_d, BLOCK_Q)  # fmt: skip
        m, denom, acc = _fwd_step(m, denom, acc, q, k, v, mask, qk_scale, DOT, 0, BLOCK_Q, GROUP_P)
        if STIS:  # its own softmax: the window (one dense tile), then the powers of two as slots
            k, v, mask = _stis_near_tile(k_base, v_base, tile, n_valid, queries, row_ok, cols, col_ok, sk_l, sk_d, sv_l,
                                         sv_d, BLOCK_Q, NEAR_P)  # fmt: skip
            m_s, denom_s, acc_s = _fwd_step(m_s, denom_s, acc_s, q, k, v, mask, qk_scale, DOT, 0, BLOCK_Q, GROUP_P)
            for step in range(0, tl.cdiv(n_far, FAR_W)):  # new names below: loop-carried types
                k_f, v_f, mask_f = _stis_far_tile(k_base, v_base, tile, step, 0, n_far, row_ok, cols, col_ok, sk_l,
                                                  sk_d, sv_l, sv_d, BLOCK_Q, GROUP_P, FAR_W)  # fmt: skip
                m_s, denom_s, acc_s = _fwd_step(m_s, denom_s, acc_s, q, k_f, v_f, mask_f, qk_scale, DOT, FAR_W,
                                                BLOCK_Q, GROUP_P)  # fmt: skip

    out, denom = _normalise(acc, denom, row_ok)
    in_range = head_ok & (queries < length)
    out_mask = in_range[:, None] & col_ok
    o_offs = _row_ptrs(b64 * so_b, heads, queries, cols, so_h, so_l, so_d)
    lse_offs = (b64 * kv_heads * GROUP + heads) * length + queries
    if O is not None:
        tl.store(O + o_offs, out.to(O.dtype.element_ty), mask=out_mask)
        tl.store(LSE + lse_offs, m + tl.log2(denom), mask=row_ok)
    if STIS:
        out_s, denom_s = _normalise(acc_s, denom_s, row_ok)
        if SO is not None:
            tl.store(SO + o_offs, out_s.to(SO.dtype.element_ty), mask=out_mask)
            tl.store(SLSE + lse_offs, (m_s + tl.log2(denom_s)) / LOG2E, mask=row_ok)
        if MIX is not None:  # both outputs as O and SO store them, mixed
            tok = b * length + queries
            g_l = branch_gate(GL, s_gt, s_gc, tok, 2 * heads, in_range)
            g_s = branch_gate(GL, s_gt, s_gc, tok, 2 * heads + 1, in_range)
            lt = out.to(MIX.dtype.element_ty).to(tl.float32)
            st = out_s.to(MIX.dtype.element_ty).to(tl.float32)
            tl.store(MIX + o_offs, (g_l[:, None] * lt + g_s[:, None] * st).to(MIX.dtype.element_ty), mask=out_mask)


@triton.jit
def _delta_and_gate(do, out, b, heads, queries, head_ok, row_ok, lse_offs, length,
                    DELTA, GL, DGL, GATE, s_gt, s_gc, BRANCH: tl.constexpr):  # fmt: skip
    """delta = rowsum(dO * O) of rows (query, head), returned with the rows' gate g (1 without GL)
    and stored for the dk/dv kernel: as g * delta where dO is g times the mix's gradient DO (GL:
    the [B * L, 2H] logits; gate_triton.gated_delta, channel 2h + BRANCH: 0 LTIS, 1 STIS)."""
    delta = tl.sum(do.to(tl.float32) * out.to(tl.float32), axis=1)
    if GL is not None:
        gate = gated_delta(delta, GL, DGL, GATE, DELTA, s_gt, s_gc, b * length + queries, 2 * heads + BRANCH, row_ok,
                           head_ok & (queries < length), lse_offs)  # fmt: skip
    else:
        gate = tl.full(delta.shape, 1.0, tl.float32)
        tl.store(DELTA + lse_offs, delta, mask=row_ok)
    return delta, gate


@triton.jit
def _ltis_bwd_prep(
    O, DO, DELTA, GL, DGL, GATE, SEQ_LEN,
    so_b, so_h, so_l, so_d,
    sdo_b, sdo_h, sdo_l, sdo_d,
    s_gt, s_gc, length, kv_heads,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Before the dk/dv kernel adds dq (the atomics path, where the STIS branch's _bwd_dq has not
    done it): delta and the gates (_delta_and_gate) of BLOCK_Q queries x (batch, kv head)."""
    tile, b, g, n_valid, queries, heads, head_ok, row_ok, cols, col_ok = _query_program(
        SEQ_LEN, length, kv_heads, GROUP, GROUP_P, BLOCK_Q, HEAD_DIM, BLOCK_D)
    b64 = b.to(tl.int64)
    do = tl.load(_row_ptrs(DO + b64 * sdo_b, heads, queries, cols, sdo_h, sdo_l, sdo_d), mask=row_ok[:, None] & col_ok, other=0.0)
    out = tl.load(_row_ptrs(O + b64 * so_b, heads, queries, cols, so_h, so_l, so_d), mask=row_ok[:, None] & col_ok, other=0.0)
    lse_offs = (b64 * kv_heads * GROUP + heads) * length + queries
    _delta_and_gate(do, out, b, heads, queries, head_ok, row_ok, lse_offs, length, DELTA, GL, DGL, GATE, s_gt, s_gc, 0)


@triton.jit
def _bwd_dq(
    Q, K, V, IDX, SEQ_LEN, O, DO, DQ, LSE, DELTA, GL, DGL, GATE, LT, DELTA_L, GATE_L,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_g, sk_l, sk_d,
    sv_b, sv_g, sv_l, sv_d,
    si_b, si_g, si_l, si_t,
    so_b, so_h, so_l, so_d,
    sdo_b, sdo_h, sdo_l, sdo_d,
    s_gt, s_gc, length, n_slots, kv_heads, qk_scale, scale,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr, ACCUMULATE: tl.constexpr,
    STIS: tl.constexpr, NEAR_P: tl.constexpr, FAR_W: tl.constexpr, FAR_FIRST: tl.constexpr,
):  # fmt: skip
    """dq of one branch for BLOCK_Q queries x (batch, kv head), walking its keys like the
    forward: LTIS's selected slots and own block, or (STIS) the window's tile and the powers of
    two as n_slots slot tiles (_stis_near_keys, _stis_far_keys; LSE then in natural log, as the
    forward stores it). Also writes delta (_delta_and_gate) for the branch's dk/dv kernel. For LTIS
    this is the deterministic path (torch.use_deterministic_algorithms), no atomics: on the atomics
    path the LTIS dk/dv kernel adds dq and _ltis_bwd_prep, or this kernel for STIS, writes delta.
    DQ has O's strides; ACCUMULATE: add to what it holds (the STIS branch's dq).
    GL (if not None): DO is the gated mix's gradient, and this branch's dO is its gate g (channel
    2h, or 2h + 1 for STIS, of the [B * L, 2H] logits GL) times it, formed here in registers,
    rounded to the input dtype for the tensor-core products (the values a gate kernel would have
    stored). The logits' gradient of that channel goes to DGL, g (fp32, laid out like LSE) to GATE
    for the dk/dv kernel, which scales its probabilities and dp by it per row (a per-element dO
    there cost ~0.1 ms at L = 4096). LT (if not None, STIS with GL): the LTIS output, O's strides,
    for which this kernel also writes what _ltis_bwd_prep would, the LTIS gates to GATE_L, g *
    delta to DELTA_L and channel 2h of DGL, from the dO rows it holds (one launch and one pass over
    the mix's gradient less). FAR_FIRST (STIS): 0 walks the window and every power of two; 1 leaves
    the window and the distance 16 to the LTIS dk/dv kernel (its SLSE rows) and starts at 32."""
    tile, b, g, n_valid, queries, heads, head_ok, row_ok, cols, col_ok = _query_program(
        SEQ_LEN, length, kv_heads, GROUP, GROUP_P, BLOCK_Q, HEAD_DIM, BLOCK_D)
    row_mask = row_ok[:, None] & col_ok
    b64 = b.to(tl.int64)
    q = tl.load(_row_ptrs(Q + b64 * sq_b, heads, queries, cols, sq_h, sq_l, sq_d), mask=row_mask, other=0.0)
    do = tl.load(_row_ptrs(DO + b64 * sdo_b, heads, queries, cols, sdo_h, sdo_l, sdo_d), mask=row_mask, other=0.0)
    o_offs = _row_ptrs(b64 * so_b, heads, queries, cols, so_h, so_l, so_d)
    out = tl.load(O + o_offs, mask=row_mask, other=0.0)
    lse_offs = (b64 * kv_heads * GROUP + heads) * length + queries
    lse = tl.load(LSE + lse_offs, mask=row_ok, other=0.0)
    if STIS:
        lse = lse * LOG2E
    if LT is not None:
        _delta_and_gate(do, tl.load(LT + o_offs, mask=row_mask, other=0.0), b, heads, queries, head_ok, row_ok,
                        lse_offs, length, DELTA_L, GL, DGL, GATE_L, s_gt, s_gc, 0)  # fmt: skip
    delta, gate = _delta_and_gate(do, out, b, heads, queries, head_ok, row_ok, lse_offs, length,
                                  DELTA, GL, DGL, GATE, s_gt, s_gc, STIS)  # fmt: skip
    if GL is not None:
        # each kernel's delta matches its own dO: dk/dv's unrounded g * dO, this kernel's rounded
        # one (a mismatch leaves rounding noise where ds should cancel to 0, e.g. a lone key)
        do = (gate[:, None] * do.to(tl.float32)).to(do.dtype)
        delta = tl.sum(do.to(tl.float32) * out.to(tl.float32), axis=1)
    do = do.to(q.dtype)
    k_base = K + b64 * sk_b + g * sk_g
    v_base = V + b64 * sv_b + g * sv_g

    dq = tl.zeros([BLOCK_Q * GROUP_P, BLOCK_D], tl.float32)
    if tile * BLOCK_Q < n_valid:
        if STIS:
            if FAR_FIRST == 0:
                k, v, mask = _stis_near_tile(k_base, v_base, tile, n_valid, queries, row_ok, cols, col_ok, sk_l, sk_d,
                                             sv_l, sv_d, BLOCK_Q, NEAR_P)  # fmt: skip
                dq = _dq_step(dq, q, do, k, v, mask, lse, delta, qk_scale, DOT, 0, BLOCK_Q, GROUP_P)
            for step in range(0, tl.cdiv(n_slots - FAR_FIRST, FAR_W)):  # new names below: loop-carried types
                k_f, v_f, mask_f = _stis_far_tile(k_base, v_base, tile, step, FAR_FIRST, n_slots, row_ok, cols, col_ok,
                                                  sk_l, sk_d, sv_l, sv_d, BLOCK_Q, GROUP_P, FAR_W)  # fmt: skip
                dq = _dq_step(dq, q, do, k_f, v_f, mask_f, lse, delta, qk_scale, DOT, FAR_W, BLOCK_Q, GROUP_P)
        else:
            idx_base = IDX + b64 * si_b + g * si_g
            for t in range(n_slots):
                k, v, mask = _ltis_slot_tile(k_base, v_base, idx_base, si_l, si_t, tile, t, n_valid, row_ok, cols,
                                             col_ok, sk_l, sk_d, sv_l, sv_d, BLOCK_Q, GROUP_P)  # fmt: skip
                dq = _dq_step(dq, q, do, k, v, mask, lse, delta, qk_scale, DOT, _BLOCK, BLOCK_Q, GROUP_P)
            k, v, mask = _own_block_tile(k_base, v_base, tile, n_valid, queries, row_ok, cols, col_ok, sk_l, sk_d,
                                         sv_l, sv_d, BLOCK_Q)  # fmt: skip
            dq = _dq_step(dq, q, do, k, v, mask, lse, delta, qk_scale, DOT, 0, BLOCK_Q, GROUP_P)

    in_range = (head_ok & (queries < length))[:, None] & col_ok
    _store_grad(DQ + o_offs, dq * scale, in_range, ACCUMULATE)


@triton.jit
def _store_grad(ptrs, grad, mask, ACCUMULATE: tl.constexpr):
    """Store an fp32 gradient tile in the buffer's dtype; ACCUMULATE: added to what the buffer
    holds (the STIS branch's gradient, which that branch's backward wrote first)."""
    if ACCUMULATE:
        grad += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, grad.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _branch_rows(s, dp, ok, LSE, DELTA, GATE, lse_offs, row_ok, LOG_E: tl.constexpr):
    """One branch's (probabilities for dv, ds) [rows, keys] of a chunk from its scores s (log2
    units) and dp = dO V^T: ok masks the pairs it has, GATE (if not None) scales the probabilities
    for dv and dp (DO is then the mix's gradient). LOG_E: its logsumexp is in natural log (STIS's)."""
    lse = tl.load(LSE + lse_offs, mask=row_ok, other=0.0)
    if LOG_E:
        lse = lse * LOG2E
    delta = tl.load(DELTA + lse_offs, mask=row_ok, other=0.0)
    p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
    p_v = p
    if GATE is not None:
        gate = tl.load(GATE + lse_offs, mask=row_ok, other=0.0)[:, None]
        p_v = p * gate
        dp = dp * gate
    return p_v, p * (dp - delta[:, None])


@triton.jit
def _dkdv_rows(
    dk, dv, k, v, keys, queries, heads, row_ok,
    q_base, do_base, DQ, dq_off, LSE, DELTA, GATE, SLSE, SDELTA, SGATE, lse_base,
    sq_h, sq_l, sq_d, sdo_h, sdo_l, sdo_d, sdq_h, sdq_l, sdq_d, length, qk_scale, scale, cols, col_ok,
    LTIS: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """Add one chunk of query rows' contribution to dk (unscaled) and dv of one key block (GATE:
    the rows' gates, if DO is the mix's gradient; they scale the probabilities for dv and dp).
    LTIS: 1 the rows are the block's own queries (causal), 2 queries that selected it, 0 none of
    LTIS's. SLSE (if not None, with SDELTA and SGATE, laid out like LSE): STIS's rows as well, at
    distances 0..8 and 16 (its window and first power of two), from the same scores and dp: one
    set of dots for both branches (the window of the block's own and next queries, which
    stis_triton's dk/dv kernel and the STIS dq kernel then skip). DQ (if not None): also add the
    chunk's dq (scaled) to its fp32 rows in DQ + dq_off, atomically."""
    mask = row_ok[:, None] & col_ok
    q = tl.load(_row_ptrs(q_base, heads, queries, cols, sq_h, sq_l, sq_d), mask=mask, other=0.0)
    do = tl.load(_row_ptrs(do_base, heads, queries, cols, sdo_h, sdo_l, sdo_d), mask=mask, other=0.0)
    lse_offs = lse_base + heads * length + queries
    s = dot(q, tl.trans(k), DOT) * qk_scale
    dp = dot(do, tl.trans(v), DOT)
    ok = row_ok[:, None]
    if LTIS:
        ok_l = ok
        if LTIS == 1:
            ok_l = ok & (keys[None, :] <= queries[:, None])
        p, ds = _branch_rows(s, dp, ok_l, LSE, DELTA, GATE, lse_offs, row_ok, False)
    if SLSE is not None:
        gap = queries[:, None] - keys[None, :]
        ok_s = ok & (gap >= 0) & ((gap <= _LOCAL) | (gap == 2 * _LOCAL))
        p_s, ds_s = _branch_rows(s, dp, ok_s, SLSE, SDELTA, SGATE, lse_offs, row_ok, True)
        if LTIS:
            p, ds = p + p_s, ds + ds_s
        else:
            p, ds = p_s, ds_s
    dv += dot(tl.trans(p.to(do.dtype)), do, DOT)
    ds = ds.to(q.dtype)
    dk += dot(tl.trans(ds), q, DOT)
    if DQ is not None:  # relaxed: only the sum matters, no ordering against other memory
        dq_ptrs = _row_ptrs(DQ + dq_off, heads, queries, cols, sdq_h, sdq_l, sdq_d)
        tl.atomic_add(dq_ptrs, dot(ds, k, DOT) * scale, mask=mask, sem="relaxed")
    return dk, dv


@triton.jit
def _ltis_bwd_dkdv(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, GATE, SLSE, SDELTA, SGATE, SEQ_LEN, OFFSETS, ORDER,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_g, sk_l, sk_d,
    sv_b, sv_g, sv_l, sv_d,
    sdo_b, sdo_h, sdo_l, sdo_d,
    sdq_b, sdq_h, sdq_l, sdq_d,
    sdk_b, sdk_g, sdk_l, sdk_d,
    length, num_blocks, kv_heads, qk_scale, scale,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT: tl.constexpr, N_SLOTS: tl.constexpr, ACCUMULATE: tl.constexpr,
):  # fmt: skip
    """dk, dv of key block j x (batch, kv head): its own 16 queries (causal), then every query
    that selected it (the inverted index), 16 queries x all the group's heads per step.
    Each step is three small tensor-core dots against the block's K and V (four with DQ). DK and DV
    share strides. One warp per program where a step's tiles are small: with three dots 0.27 ms on an
    H100 at L = 4096 (B=64, bf16, d = 16), against 0.33 ms with 2 warps and 0.54 ms with 4; with four
    still the fastest (results/bench/raw-2026-11-26-session9/sweep_dkdv_dq_h100.txt); 4 warps for
    larger tiles.
    GATE (if not None): DO is the mix's gradient, and GATE the rows' gates _bwd_dq (this branch's
    or STIS's) or _ltis_bwd_prep wrote. DQ (if not None): fp32 [B, H, L, d] that every step
    adds its rows' dq to, atomically (the atomics path: no dq kernel, which gathered K and V
    again). ACCUMULATE: add dk and dv to what DK and DV hold (the STIS branch's).
    SLSE, SDELTA, SGATE (if not None, under the gate): the STIS branch's logsumexp, delta and gates;
    the block's own queries then add STIS's window too, and its next 16 queries STIS's window and
    distance 16 (_dkdv_rows), one step more."""
    j = tl.program_id(0)
    bg = tl.program_id(1)
    b = bg // kv_heads
    g = bg % kv_heads
    n_valid = valid_length(SEQ_LEN, b, length)
    b64 = b.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols[None, :] < HEAD_DIM
    keys = j * _BLOCK + tl.arange(0, _BLOCK)
    key_ok = (keys < n_valid)[:, None] & col_ok
    k = tl.load(_row_ptrs(K + b64 * sk_b, g, keys, cols, sk_g, sk_l, sk_d), mask=key_ok, other=0.0)
    v = tl.load(_row_ptrs(V + b64 * sv_b, g, keys, cols, sv_g, sv_l, sv_d), mask=key_ok, other=0.0)
    q_base = Q + b64 * sq_b
    do_base = DO + b64 * sdo_b
    lse_base = b64 * kv_heads * GROUP * length

    queries, heads, head_ok = _query_rows(j, g, _BLOCK, GROUP, GROUP_P)
    dk = tl.zeros([_BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([_BLOCK, BLOCK_D], tl.float32)
    for after in tl.static_range(2 if SLSE is not None else 1):  # the own block's queries, STIS's next 16
        rows = queries + after * _BLOCK
        dk, dv = _dkdv_rows(
            dk, dv, k, v, keys, rows, heads, head_ok & (rows < n_valid),
            q_base, do_base, DQ, b64 * sdq_b, LSE, DELTA, GATE, SLSE, SDELTA, SGATE, lse_base,
            sq_h, sq_l, sq_d, sdo_h, sdo_l, sdo_d, sdq_h, sdq_l, sdq_d, length, qk_scale, scale, cols, col_ok,
            LTIS=1 - after, DOT=DOT,
        )  # fmt: skip

    listed = j < num_blocks  # the last, partial block is never selectable
    start = tl.load(OFFSETS + bg * (num_blocks + 1) + j, mask=listed, other=0)  # ltis_index_triton's rows
    end = tl.load(OFFSETS + bg * (num_blocks + 1) + j + 1, mask=listed, other=0)
    rank = queries - j * _BLOCK  # 0..15: the row's query within the chunk
    for c in range(start, end, _BLOCK):
        sel_ok = c + rank < end
        # flat (b, g, query, slot) position of the pair, int32 as ltis_index_triton writes it, and a
        # constexpr divisor (a shift for n = 4): with int64 division by runtime values this kernel
        # took 1.4x as long (H100)
        pair = tl.load(ORDER + c + rank, mask=sel_ok, other=0)
        sel = tl.where(sel_ok, pair // N_SLOTS - bg * length, 0)
        dk, dv = _dkdv_rows(
            dk, dv, k, v, keys, sel, heads, head_ok & sel_ok,
            q_base, do_base, DQ, b64 * sdq_b, LSE, DELTA, GATE, None, None, None, lse_base,
            sq_h, sq_l, sq_d, sdo_h, sdo_l, sdo_d, sdq_h, sdq_l, sdq_d, length, qk_scale, scale, cols, col_ok,
            LTIS=2, DOT=DOT,
        )  # fmt: skip

    out_ptrs = _row_ptrs(b64 * sdk_b, g, keys, cols, sdk_g, sdk_l, sdk_d)
    out_ok = (keys < length)[:, None] & col_ok
    _store_grad(DK + out_ptrs, dk * scale, out_ok, ACCUMULATE)
    _store_grad(DV + out_ptrs, dv, out_ok, ACCUMULATE)


def _stages(tile_bytes: int) -> int:
    """Software-pipelining depth of the dk/dv loop, which loads tile_bytes per step: 3 (Triton's
    default) for the small tiles of the real shapes, 1 for large ones, whose 3 copies could
    overflow shared memory (the forward's slot tiles at fp32, d = 64, H = G needed 262 KB of
    227 KB on an H100 when it was pipelined)."""
    return 3 if tile_bytes <= 16384 else 1


def _attention_config(group_p: int) -> dict[str, int]:
    """Queries per program, warps and pipelining of the forward and dq kernels.

    Rows are (query, head) pairs; tl.dot needs 16 of them, so a program takes 16 / group_p
    queries (4 at H/G = 4). Their selected blocks differ, so each slot scores the rows against
    all the tile's 4 x 16 keys on tensor cores and the softmax keeps each row's own 16 (_own).
    On an H100 (B=64, H=8, G=2, d=16, L=4096, bf16) that forward took 0.59 ms against 2.18 ms for
    exact per-row products on CUDA cores. Then: 1 warp 0.47 ms, 2 warps 0.77, 4 warps 1.40; 8
    queries (32 rows) per program 0.73; all slots as one [16, 256] key tile 0.53; the slot loop
    unrolled 0.47. The softmax on own columns only (instead of masking the other 3/4) made the
    forward 0.95x and the backward 0.97x as long (H200, L = 1024-4096), where 8 or 16 queries per
    program with 1-4 warps stayed 1.1-2.4x slower.
    No software pipelining (num_stages=1): the 3 stages Triton defaults to took 0.66 ms, and they
    keep 3 copies of a slot's K/V tiles in shared memory, more than an H100 has at fp32, d = 64,
    H = G (262 KB of 227 KB).
    """
    return dict(BLOCK_Q=max(1, reference.BLOCK // group_p), num_warps=1, num_stages=1)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, seq_len: Tensor | None) -> None:
    """The shared GQA checks plus the block index layout."""
    check_gqa(q, k, v, seq_len, max_head_dim=MAX_HEAD_DIM)
    (b, _, length, _), g = q.shape, k.shape[1]
    if block_idx.dim() != 4 or block_idx.shape[:3] != (b, g, length) or block_idx.is_floating_point():
        raise ValueError(f"block_idx must be an integer [B, G, L, n] = [{b}, {g}, {length}, n]; got {tuple(block_idx.shape)}")
    if block_idx.device != q.device:
        raise ValueError(f"block_idx is on {block_idx.device}, q on {q.device}")


def launch_forward(q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None) -> tuple[Tensor, Tensor]:
    """The forward kernel: (output [B, H, L, d] laid out [B, L, H, d], fp32 logsumexp [B, H, L]).
    seq_len as device_lengths gives it."""
    out, lse = branch_buffers(q)
    _launch_forward(q, k, v, block_idx, scale, seq_len, (out, lse), None, None, None)
    return out, lse


class BothForward(NamedTuple):
    """What launch_both_forward writes: each branch's output and logsumexp as its own launcher
    gives them (None where not kept), and the gated mix (None without gate logits)."""

    ltis: Tensor | None
    ltis_lse: Tensor | None
    stis: Tensor | None
    stis_lse: Tensor | None
    mix: Tensor | None


def launch_both_forward(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None,
    gate_logits: Tensor | None = None, keep_branches: bool = True,
) -> BothForward:
    """Both branches in one kernel (the STIS rows scored in LTIS's programs, against the window's
    tile and slot tiles of its powers of two): stis_triton.launch_forward's output and logsumexp
    beside this branch's, and with gate_logits ([B * L, 2H]) their gated mix, laid out [B, L, H,
    d], as gate_triton's kernel would mix the stored outputs. keep_branches=False (inference,
    with gate_logits): only the mix is written."""
    if not keep_branches and gate_logits is None:
        raise ValueError("without gate logits there is no mix: keep the branches")
    ltis, stis = (branch_buffers(q), branch_buffers(q)) if keep_branches else (None, None)
    mix = empty_blhd(q, q.shape[1]) if gate_logits is not None else None
    _launch_forward(q, k, v, block_idx, scale, seq_len, ltis, stis, gate_logits, mix)
    return BothForward(*(ltis or (None, None)), *(stis or (None, None)), mix)


def _stis_powers(length: int) -> int:
    """STIS's distances 16, 32, ... below length (the slots of _stis_far_keys)."""
    return max(0, len(reference.stis_offsets(length)) - (reference.LOCAL_WINDOW + 1))


def _far_width(length: int) -> int:
    """Keys per query in a slot tile of STIS's powers of two: their count rounded up to a power of
    two, 4 to 16 (8 from L = 512 to 4096), so that a tile holds few columns no power fills. With 16
    at every L, half of the tile's columns were empty at L = 4096."""
    return min(reference.BLOCK, max(4, triton.next_power_of_2(max(1, _stis_powers(length)))))


def _launch_forward(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None,
    ltis: tuple[Tensor, Tensor] | None, stis: tuple[Tensor, Tensor] | None, gate_logits: Tensor | None,
    mix: Tensor | None,
) -> None:
    """_ltis_fwd over every query tile; the outputs given (all laid out alike) are written."""
    b, _, length, _ = q.shape
    kv_heads = k.shape[1]
    meta = _meta(q, kv_heads)
    out, lse = ltis or (None, None)
    stis_out, stis_lse = stis or (None, None)
    written = next(x for x in (out, stis_out, mix) if x is not None)  # all empty_blhd's: one layout
    with_stis = stis is not None or mix is not None
    _ltis_fwd[(triton.cdiv(length, meta["BLOCK_Q"]), b * kv_heads)](
        q, k, v, block_idx, seq_len, out, lse, stis_out, stis_lse, gate_logits, mix,
        *q.stride(), *k.stride(), *v.stride(), *block_idx.stride(), *written.stride(), *logit_strides(gate_logits),
        length, block_idx.shape[3], _stis_powers(length), kv_heads, scale * LOG2E.value, **meta, STIS=with_stis,
        **reg_cap(_measured_cap(q, meta, _FWD_MAXNREG)),
    )  # fmt: skip


def uses_atomics() -> bool:
    """True where the backward adds dq with atomics: unless torch.use_deterministic_algorithms is on."""
    return not torch.are_deterministic_algorithms_enabled()


def launch_backward(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, seq_len: Tensor | None, out: Tensor, lse: Tensor,
    dout: Tensor, scale: float, gate: tuple[Tensor, Tensor] | None = None,
    add_to: tuple[Tensor, Tensor, Tensor] | None = None, prepared: tuple[Tensor, Tensor] | None = None,
    index: tuple[Tensor, Tensor] | None = None, stis_window: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv (laid out like the forward's output and [B, L, G, d]) from the forward's
    output and logsumexp. gate = (logits, their gradient), both [B * L, 2H] with one layout: dout
    is then the gated mix's gradient, the kernels apply this branch's gate (channels 2h) to its
    products and write those channels of the logits' gradient (no gate kernel, no dO buffer).
    add_to: the STIS branch's (dq, dk, dv), laid out like these, which the kernels add to in place
    and return. prepared (with gate, where uses_atomics()): the (delta, gates) buffers the STIS dq
    kernel has written for this branch, with the logits' gradient; the prep kernel is then skipped.
    index: inverted_index(block_idx, seq_len), if the caller built it already. stis_window (with
    gate, add_to and prepared): the STIS branch's (logsumexp, delta, gates) from a backward that left
    its window to this one (stis_triton.launch_backward's window_to_ltis): the dk/dv kernel adds that
    window's dq, dk and dv from the same products (_dkdv_rows).

    Where uses_atomics(), the dk/dv kernel adds each pair's dq with fp32 atomics (the module
    docstring says why and what it saves) to add_to's dq, which must then be fp32, or to a
    zeroed fp32 dq; its last bits may change from run to run. Otherwise the dq kernel runs
    instead, bit for bit reproducible (dq in the inputs' dtype without add_to). Callers cast dq."""
    b, h, length, _ = q.shape
    kv_heads, n_slots = k.shape[1], block_idx.shape[3]
    qk_scale = scale * LOG2E.value
    meta = _meta(q, kv_heads)
    if add_to is not None and (add_to[0].stride() != out.stride() or add_to[1].stride() != add_to[2].stride()):
        raise ValueError("add_to must be laid out like the branch's own gradients (dq like the output, dk like dv)")
    if prepared is not None and (gate is None or not uses_atomics()):
        raise ValueError("prepared rows are the gated atomics path's (the dq kernel writes its own)")
    if stis_window is not None and (prepared is None or add_to is None):
        raise ValueError("STIS's window is added on the gated atomics path, to the STIS branch's gradients")
    gl, dgl, delta, gates, gate_strides = backward_gate_args(gate, lse, prepared)
    if not uses_atomics():
        dq = add_to[0] if add_to is not None else empty_blhd(q, h)  # laid out like out: shares its strides
        launch_dq(q, k, v, block_idx, seq_len, out, lse, dout, dq, delta, (gl, dgl, gates, gate_strides), scale,
                  accumulate=add_to is not None)  # fmt: skip
        add_dq = None
    else:
        dq = add_dq = add_to[0] if add_to is not None else empty_blhd(q, h, torch.float32).zero_()
        if dq.dtype != torch.float32:
            raise ValueError(f"the atomics add dq in fp32; add_to's dq is {dq.dtype}")
        if prepared is None:
            prep = {name: meta[name] for name in ("GROUP", "GROUP_P", "HEAD_DIM", "BLOCK_D")}
            block_q = max(1, _PREP_ROWS // meta["GROUP_P"])
            _ltis_bwd_prep[(triton.cdiv(length, block_q), b * kv_heads)](
                out, dout, delta, gl, dgl, gates, seq_len, *out.stride(), *dout.stride(), *gate_strides,
                length, kv_heads, **prep, BLOCK_Q=block_q, num_warps=4,
            )  # fmt: skip

    offsets, order = index or inverted_index(block_idx, seq_len)
    dk, dv = add_to[1:] if add_to is not None else (empty_blhd(k, kv_heads), empty_blhd(v, kv_heads))
    meta = {name: meta[name] for name in ("GROUP", "GROUP_P", "HEAD_DIM", "BLOCK_D", "DOT")}
    step_bytes = reference.BLOCK * meta["GROUP_P"] * meta["BLOCK_D"] * q.element_size()  # q or dO rows of a step
    _ltis_bwd_dkdv[(triton.cdiv(length, reference.BLOCK), b * kv_heads)](
        q, k, v, dout, add_dq, dk, dv, lse, delta, gates, *(stis_window or (None,) * 3), seq_len, offsets, order,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *(dq.stride() if add_dq is not None else (0,) * 4),
        *dk.stride(), length, length // reference.BLOCK if n_slots else 0, kv_heads, qk_scale, scale,
        **meta, N_SLOTS=max(n_slots, 1), ACCUMULATE=add_to is not None,
        num_warps=1 if step_bytes <= 4096 else 4, num_stages=_stages(2 * step_bytes),
        **reg_cap(_measured_cap(q, meta, _DKDV_WINDOW_MAXNREG if stis_window else _DKDV_MAXNREG)),
    )  # fmt: skip
    return dq, dk, dv


def launch_dq(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor | None, seq_len: Tensor | None, out: Tensor, lse: Tensor,
    dout: Tensor, dq: Tensor, delta: Tensor, gate_args: tuple, scale: float, accumulate: bool = False,
    ltis_prep: tuple[Tensor, Tensor, Tensor] | None = None, window: bool = True,
) -> None:
    """_bwd_dq over every query tile: LTIS's dq (block_idx given) or, with block_idx None, STIS's
    (its powers of two as slot tiles). dq is laid out like out; delta like lse. gate_args:
    backward_gate_args' (logits, their gradient, gates, strides), its delta aside. ltis_prep (STIS
    under the gate): (LTIS output, delta, gates), whose rows the kernel writes as _ltis_bwd_prep would.
    window=False (STIS): its window and distance 16 are left to the LTIS dk/dv kernel (its SLSE rows)."""
    b, _, length, _ = q.shape
    kv_heads = k.shape[1]
    gl, dgl, gates, gate_strides = gate_args
    lt, delta_l, gates_l = ltis_prep or (None, None, None)
    stis = block_idx is None
    meta = _meta(q, kv_heads)
    _bwd_dq[(triton.cdiv(length, meta["BLOCK_Q"]), b * kv_heads)](
        q, k, v, block_idx, seq_len, out, dout, dq, lse, delta, gl, dgl, gates, lt, delta_l, gates_l,
        *q.stride(), *k.stride(), *v.stride(), *(block_idx.stride() if not stis else (0,) * 4), *out.stride(),
        *dout.stride(), *gate_strides, length, _stis_powers(length) if stis else block_idx.shape[3], kv_heads,
        scale * LOG2E.value, scale, **meta, ACCUMULATE=accumulate, STIS=stis, FAR_FIRST=int(not window),
        **reg_cap(_measured_cap(q, meta, _DQ_MAXNREG)),
    )  # fmt: skip


def _measured_cap(q: Tensor, meta: dict[str, object], registers: int) -> int | None:
    """registers where the caps were measured (16-wide heads, 2-byte inputs), else None."""
    return registers if meta["BLOCK_D"] == 16 and q.element_size() == 2 else None


def _meta(q: Tensor, kv_heads: int) -> dict[str, object]:
    """Compile-time parameters of the forward and dq kernels (NEAR_P: the STIS window tile's
    width, _stis_near_keys; FAR_W: _far_width)."""
    group = q.shape[1] // kv_heads
    group_p = triton.next_power_of_2(group)
    d = q.shape[3]
    config = _attention_config(group_p)
    return dict(GROUP=group, GROUP_P=group_p, HEAD_DIM=d, BLOCK_D=block_d(d), DOT=dot_mode(q.dtype),
                NEAR_P=triton.next_power_of_2(config["BLOCK_Q"] + reference.LOCAL_WINDOW),
                FAR_W=_far_width(q.shape[2]), **config)


class _LtisAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, block_idx, the output and the fp32 logsumexp [B, H, L]."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None
    ) -> Tensor:
        out, lse = launch_forward(q, k, v, block_idx, scale, seq_len)
        ctx.save_for_backward(q, k, v, block_idx, seq_len, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        dq, dk, dv = launch_backward(*ctx.saved_tensors, dout, ctx.scale)
        return dq.to(dk.dtype), dk, dv, None, None, None


def ltis_attention(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None = None
) -> Tensor:
    """Long-term branch, same contract as reference.ltis_attention: q [B, H, L, d], k, v
    [B, G, L, d], block_idx [B, G, L, n] int (-1 = unused; 0 <= id < L // 16), any strides;
    outputs at positions >= seq_len[b] exactly 0. Differentiable in q, k, v.

    The output is [B, H, L, d] laid out as [B, L, H, d] in memory.
    """
    check_inputs(q, k, v, block_idx, seq_len)
    return _LtisAttention.apply(q, k, v, block_idx, scale, device_lengths(seq_len, q.device))
