"""LTIS's inverted index (blossom/attention/ltis_index_triton.py) against the same CSR built with
a stable torch.argsort: offsets and order equal exactly. CPU cases run in the Triton interpreter;
the gpu ones on a CUDA machine (`pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from blossom.attention import ltis_index_triton, reference
from blossom.attention.ltis_index_triton import inverted_index

from .cases import needs_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]


def torch_csr(block_idx: Tensor, seq_len: Tensor | None) -> tuple[Tensor, Tensor]:
    """What inverted_index computes, in plain torch: per (batch, kv head) its blocks' rows and one
    for the pairs left out (-1 slots, queries at or past seq_len); each row's flat positions ascending."""
    b, g, length, _ = block_idx.shape
    num_blocks = length // reference.BLOCK
    block_idx = block_idx.long()
    live = block_idx >= 0
    if seq_len is not None:
        query = torch.arange(length, device=block_idx.device)[None, None, :, None]
        live &= query < seq_len.long()[:, None, None, None]
    segment = torch.arange(b * g, device=block_idx.device).view(b, g, 1, 1)
    rows = (segment * (num_blocks + 1) + torch.where(live, block_idx, num_blocks)).flatten()
    order = torch.argsort(rows, stable=True)
    starts = torch.arange(b * g * (num_blocks + 1) + 1, device=block_idx.device)
    return torch.searchsorted(rows[order], starts).int(), order.int()


def check(shape: tuple[int, int, int, int], device: str, seed: int, padded: bool = True,
          dtype: torch.dtype = torch.int32) -> None:
    gen = torch.Generator().manual_seed(seed)
    block_idx = torch.randint(-1, shape[2] // reference.BLOCK, shape, generator=gen, dtype=dtype)
    seq_len = torch.randint(1, shape[2] + 1, shape[:1], generator=gen, dtype=torch.int32) if padded else None
    block_idx, seq_len = block_idx.to(device), seq_len.to(device) if padded else None
    offsets, order = inverted_index(block_idx, seq_len)
    want_offsets, want_order = torch_csr(block_idx, seq_len)
    assert torch.equal(offsets, want_offsets)
    assert torch.equal(order, want_order)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 2, 70, 4), (2, 1, 300, 3), (1, 1, 17, 1)])
def test_matches_a_torch_csr(shape: tuple[int, int, int, int], device: str) -> None:
    check(shape, device, seed=0)


@pytest.mark.parametrize("device", DEVICES)
def test_int64_block_idx_without_seq_len(device: str) -> None:
    check((2, 2, 64, 4), device, seed=1, padded=False, dtype=torch.int64)


@pytest.mark.parametrize("device", DEVICES)
def test_several_tiles_and_row_chunks(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """Tiles of 16 pairs, at most 4 per segment, 4 rows per scan step: 800 pairs per segment make
    4 tiles of 256 (the tile grows past _MIN_TILE) and 13 rows 4 steps."""
    monkeypatch.setattr(ltis_index_triton, "_MIN_TILE", 16)
    monkeypatch.setattr(ltis_index_triton, "_MAX_TILES", 4)
    monkeypatch.setattr(ltis_index_triton, "_ROW_CHUNK", 4)
    assert ltis_index_triton._tile(800) == 256
    check((2, 2, 200, 4), device, seed=2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", [(64, 2, 4096, 4), (255, 1, 4112, 1), (3, 2, 8192, 4), (64, 2, 512, 4)])
def test_benchmark_and_large_shapes(shape: tuple[int, int, int, int]) -> None:
    check(shape, "cuda", seed=3)


def test_no_selectable_block() -> None:
    """L < 16 or no slot: one zero each, which the dk/dv kernel never reads."""
    for shape in [(2, 2, 15, 4), (2, 2, 64, 0)]:
        offsets, order = inverted_index(torch.zeros(shape, dtype=torch.int32), None)
        assert offsets.tolist() == [0] and order.tolist() == [0]


def test_too_many_pairs_for_int32_places() -> None:
    """2^31 pairs (a zero-stride block_idx: nothing allocated) are refused before any launch."""
    block_idx = torch.zeros(1, dtype=torch.int32).expand(2**14, 2, 2**14, 4)
    with pytest.raises(ValueError, match="too many pairs"):
        inverted_index(block_idx, None)
