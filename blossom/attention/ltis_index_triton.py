"""LTIS's inverted index, the CSR the dk/dv kernel walks (ltis_triton._ltis_bwd_dkdv): for every key
block, the (query, slot) pairs that selected it, by a counting sort in three Triton kernels.

Rows: each (batch, kv head) segment s has its nb blocks' rows and one more for its pairs left out
(slot -1, or a query at or past seq_len): row s (nb + 1) + block, the left-out row s (nb + 1) + nb.
Every pair has a row in its own segment, so segment s's L n pairs fill places s L n .. (s + 1) L n - 1
of `order` whatever they selected, and no sum runs across segments. Within a row the pairs are in
ascending flat order (a stable sort): the dk/dv kernel's sums are deterministic and its chunks read
neighbouring q rows.

The kernels: a histogram of rows per tile of TILE pairs (segments x tiles programs); per segment, the
exclusive sums across rows and tiles that give each tile's first place per row, and the offsets
(one program per segment); per tile, its pairs sorted by row (tl.sort of row * TILE + place, so
stable) and scattered to their places. Before, one kernel wrote a sort key per pair and torch.sort
(stable) and torch.searchsorted made the CSR: seven kernels of cub's and PyTorch's, 95 us of the
training step's GPU work at L = 4096 and 35 us at 512 (H100, B = 64, bf16), where these take 76 and
12: the step 0.989x and 0.918x as long (results/bench/README.md, session 19).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from blossom.attention import reference
from blossom.attention.triton_common import valid_length

# Pairs per tile: _MIN_TILE (128 queries x 4 slots), larger where a segment would have over _MAX_TILES (the
# scan holds [tiles, _ROW_CHUNK] counts). The sort's cost per pair grows with the tile, the histograms' with
# tiles x rows. H100, B = 64, bf16 selections, the three kernels as CUDA graphs: 512 pairs and 8 warps for the
# scatter took 13 / 78 us at L = 512 / 4096 (1024 pairs: 18 / 100), at L = 8192 1024 pairs 248 us (512: 289);
# the scatter with 4 warps took 1.05-1.35x as long (results/bench/README.md, session 19).
_MIN_TILE = 512
_MAX_TILES = 32
_ROW_CHUNK = 256  # rows per step of the scan
_SCATTER_WARPS = 8


@triton.jit
def _tile_rows(IDX, SEQ_LEN, s_b, s_g, s_l, s_t, seg, tile, length, kv_heads, num_blocks,
               N_SLOTS: tl.constexpr, TILE: tl.constexpr):  # fmt: skip
    """Rows within segment seg (the block, or num_blocks for a pair left out) of its tile's pairs
    [TILE], in flat (query, slot) order, and which pairs exist."""
    pair = tile * TILE + tl.arange(0, TILE)
    exists = pair < length * N_SLOTS
    query = pair // N_SLOTS
    b = seg // kv_heads
    base = IDX + b.to(tl.int64) * s_b + (seg % kv_heads) * s_g
    blk = tl.load(base + query * s_l + (pair % N_SLOTS) * s_t, mask=exists, other=-1)
    live = (blk >= 0) & (query < valid_length(SEQ_LEN, b, length))
    return tl.where(live, blk, num_blocks).to(tl.int32), exists  # block_idx may be int64


@triton.jit
def _tile_histograms(IDX, SEQ_LEN, COUNTS, s_b, s_g, s_l, s_t, length, kv_heads, num_blocks, n_tiles,
                     N_SLOTS: tl.constexpr, TILE: tl.constexpr, ROWS_P: tl.constexpr):  # fmt: skip
    """COUNTS[seg, tile, row]: how many of the tile's pairs are in each row."""
    tile = tl.program_id(0)
    seg = tl.program_id(1)
    rows, exists = _tile_rows(IDX, SEQ_LEN, s_b, s_g, s_l, s_t, seg, tile, length, kv_heads, num_blocks, N_SLOTS, TILE)
    counts = tl.histogram(rows, ROWS_P, mask=exists)
    tl.store(COUNTS + (seg.to(tl.int64) * n_tiles + tile) * ROWS_P + tl.arange(0, ROWS_P), counts)


@triton.jit
def _tile_starts(COUNTS, OFFSETS, n_segments, n_tiles, n_rows, per_segment,
                 ROWS_P: tl.constexpr, TILES_P: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
    """One segment, in place: COUNTS[seg, tile, row] -> the place in ORDER where the tile's pairs of
    that row start, less the tile's pairs in lower rows (which come first in the tile once sorted:
    the scatter adds a pair's place in its sorted tile). And the segment's rows' offsets."""
    seg = tl.program_id(0)
    tile = tl.arange(0, TILES_P)
    first = seg * per_segment  # the segment's first place
    in_lower_rows = tl.zeros([TILES_P], tl.int32)  # per tile
    before = tl.zeros([], tl.int32)  # the segment's pairs in lower rows
    for r0 in range(0, n_rows, CHUNK):
        row = r0 + tl.arange(0, CHUNK)
        ptrs = COUNTS + (seg.to(tl.int64) * n_tiles + tile[:, None]) * ROWS_P + row[None, :]
        mask = (tile[:, None] < n_tiles) & (row[None, :] < n_rows)
        counts = tl.load(ptrs, mask=mask, other=0)
        totals = tl.sum(counts, axis=0)
        row_start = first + before + tl.cumsum(totals, 0) - totals
        earlier_tiles = tl.cumsum(counts, 0) - counts
        lower_rows = in_lower_rows[:, None] + tl.cumsum(counts, 1) - counts
        tl.store(ptrs, row_start[None, :] + earlier_tiles - lower_rows, mask=mask)
        tl.store(OFFSETS + seg * n_rows + row, row_start, mask=row < n_rows)
        before += tl.sum(totals, axis=0)
        in_lower_rows += tl.sum(counts, axis=1)
    if seg == n_segments - 1:
        tl.store(OFFSETS + n_segments * n_rows, n_segments * per_segment)


@triton.jit
def _scatter_pairs(IDX, SEQ_LEN, STARTS, ORDER, s_b, s_g, s_l, s_t, length, kv_heads, num_blocks, n_tiles,
                   per_segment, N_SLOTS: tl.constexpr, TILE: tl.constexpr, ROWS_P: tl.constexpr):  # fmt: skip
    """The tile's pairs sorted by row, ties in flat order, each written (as its flat position) to its
    row's start for the tile (_tile_starts) plus its place in the sorted tile."""
    tile = tl.program_id(0)
    seg = tl.program_id(1)
    rows, exists = _tile_rows(IDX, SEQ_LEN, s_b, s_g, s_l, s_t, seg, tile, length, kv_heads, num_blocks, N_SLOTS, TILE)
    place = tl.arange(0, TILE)
    packed = tl.sort(tl.where(exists, rows, num_blocks + 1) * TILE + place)  # pairs past the end sort last
    row = packed // TILE
    listed = row <= num_blocks
    start = tl.load(STARTS + (seg.to(tl.int64) * n_tiles + tile) * ROWS_P + row, mask=listed, other=0)
    tl.store(ORDER + start + place, seg * per_segment + tile * TILE + packed % TILE, mask=listed)


def _tile(per_segment: int) -> int:
    """Pairs per tile: _MIN_TILE, or more where a segment would have over _MAX_TILES tiles; no more
    than a segment holds. Tests shrink it to reach several tiles and row chunks in small shapes."""
    wanted = max(_MIN_TILE, triton.next_power_of_2(triton.cdiv(per_segment, _MAX_TILES)))
    return min(wanted, triton.next_power_of_2(per_segment))


def inverted_index(block_idx: Tensor, seq_len: Tensor | None) -> tuple[Tensor, Tensor]:
    """CSR of block_idx [B, G, L, n] (int, -1 unused; seq_len [B] int32 or int64 on its device, or None):
    offsets [B G (nb + 1) + 1] int32, row (b G + g) (nb + 1) + block, the last row of each (b, g)
    its pairs left out; order [B G L n] int32, the pairs' flat (b, g, query, slot) positions row
    by row, each row's ascending. Where no block is selectable (n = 0 or L < 16), one zero each."""
    b, g, length, n = block_idx.shape
    num_blocks = length // reference.BLOCK
    if n == 0 or num_blocks == 0:
        empty = torch.zeros(1, device=block_idx.device, dtype=torch.int32)
        return empty, empty
    segments, per_segment = b * g, length * n
    tile = _tile(per_segment)
    if segments * per_segment >= 2**31 or (num_blocks + 2) * tile >= 2**31:
        raise ValueError(f"block_idx {tuple(block_idx.shape)} has too many pairs for int32 places")
    n_tiles, rows_p = triton.cdiv(per_segment, tile), triton.next_power_of_2(num_blocks + 1)
    device = block_idx.device
    counts = torch.empty(segments, n_tiles, rows_p, device=device, dtype=torch.int32)
    offsets = torch.empty(segments * (num_blocks + 1) + 1, device=device, dtype=torch.int32)
    order = torch.empty(segments * per_segment, device=device, dtype=torch.int32)
    pairs = (block_idx, seq_len)
    pairs_layout = (*block_idx.stride(), length, g, num_blocks)  # what _tile_rows reads the pairs with
    _tile_histograms[(n_tiles, segments)](*pairs, counts, *pairs_layout, n_tiles, N_SLOTS=n, TILE=tile, ROWS_P=rows_p)
    _tile_starts[(segments,)](
        counts, offsets, segments, n_tiles, num_blocks + 1, per_segment,
        ROWS_P=rows_p, TILES_P=triton.next_power_of_2(n_tiles), CHUNK=min(_ROW_CHUNK, rows_p),
    )  # fmt: skip
    _scatter_pairs[(n_tiles, segments)](*pairs, counts, order, *pairs_layout, n_tiles, per_segment, N_SLOTS=n,
                                        TILE=tile, ROWS_P=rows_p, num_warps=_SCATTER_WARPS)  # fmt: skip
    return offsets, order
