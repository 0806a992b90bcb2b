"""The key-compression kernel (compress_triton.py) against reference.compress_keys.

Outputs follow the flash-attention tolerance rule (tolerance.py) against the same-dtype and fp64
references, with K in the strided layout the model hands over (a view of the qkv projection)
and in a contiguous one. CPU cases run in the Triton interpreter (fp32, exact products); the gpu set draws random shapes
in fp16 and bf16, the kernel's GPU dtypes. Cases outside the kernel's contract (fp32 on a GPU among
them) must give the reference's result.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor, nn

from blossom.attention import compress_triton, reference
from blossom.attention.compress_triton import compress_keys

from .cases import BF16, F16, F32, needs_cuda
from .tolerance import assert_close_to_reference

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def compressor(kv_heads: int, d: int, seed: int) -> tuple[Tensor, nn.Sequential]:
    """Intra-window positions [G, 32, d] and BlossomRec's compressor MLP, random (the public
    model's Linear init), fp32 on the CPU."""
    torch.manual_seed(seed)
    width = reference.WINDOW * d
    return torch.randn(kv_heads, reference.WINDOW, d), nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, d))


def keys(b: int, g: int, length: int, d: int, strided: bool, seed: int) -> Tensor:
    """k [B, G, L, d]; strided: a view of a [B, L, G + 2, d] buffer, as the qkv projection gives."""
    gen = torch.Generator().manual_seed(seed)
    if strided:
        return torch.randn(b, length, g + 2, d, generator=gen)[:, :, 1 : g + 1].transpose(1, 2)
    return torch.randn(b, g, length, d, generator=gen)


def check(b: int, g: int, length: int, d: int, dtype: torch.dtype, device: str, strided: bool, seed: int) -> None:
    positions, mlp = compressor(g, d, seed)
    k = keys(b, g, length, d, strided, seed)
    with torch.no_grad():
        ref64 = reference.compress_keys(k.double(), positions.double(), mlp.double())
        mlp.to(device=device, dtype=dtype)
        k, positions = k.to(device=device, dtype=dtype), positions.to(device=device, dtype=dtype)
        same = reference.compress_keys(k, positions, mlp)
        got = compress_keys(k, positions, mlp)
    assert got.dtype == dtype and got.shape == (b, g, length // reference.BLOCK, d)
    assert_close_to_reference("ck", got, same, ref64.to(device))


@pytest.mark.parametrize(("b", "g", "length", "d", "strided"), [
    (2, 2, 100, 16, True),  # the model's layout, 6 blocks, a partial block at the end
    (1, 1, 37, 16, False),
    (2, 2, 64, 8, True),  # d = 8: head dim padded to 16 in the kernel
])
def test_compress_matches_reference(b, g, length, d, strided) -> None:
    check(b, g, length, d, F32, "cpu", strided, seed=length)


@pytest.mark.parametrize("split", [2, 4])
def test_compress_hidden_units_split_across_programs(monkeypatch: pytest.MonkeyPatch, split: int) -> None:
    """The split path (GPU launches with few tiles): each program a share of the hidden units, the
    partials summed by the combine kernel; strided k, d = 8 padded, a partial block at the end."""
    monkeypatch.setattr(compress_triton, "_INTERPRETER_SPLIT", split)
    check(2, 2, 100, 16, F32, "cpu", True, seed=split)
    check(2, 2, 64, 8, F32, "cpu", True, seed=split)


def test_compress_block_tiles_and_short_sequences() -> None:
    """More blocks than one program's 64 (two tiles, the second partial), and L < 16: no blocks."""
    check(1, 1, 16 * 70 + 5, 8, F32, "cpu", strided=False, seed=1)
    positions, mlp = compressor(2, 16, 0)
    with torch.no_grad():
        assert compress_keys(torch.randn(2, 2, 15, 16), positions, mlp).shape == (2, 2, 0, 16)


def test_compress_wide_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wide tile (long sequences on a GPU: 128 windows, 256 hidden units a step, never split),
    here from one block on: two tiles, the second partial, d = 8 (256 hidden units: one step); one
    partial tile, d = 16, strided k."""
    monkeypatch.setattr(compress_triton, "_WIDE_FROM_BLOCKS", 1)
    monkeypatch.setattr(compress_triton, "_INTERPRETER_SPLIT", 2)
    assert compress_triton._launch(140, reference.WINDOW * 16, 1, torch.device("cpu")) == (*compress_triton._WIDE_TILE, 1)
    check(1, 1, 16 * 140 + 5, 8, F32, "cpu", strided=False, seed=1)
    check(1, 2, 16 * 20, 16, F32, "cpu", strided=True, seed=2)


def test_wide_tile_only_where_its_programs_fill_the_sms(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU of 132 SMs: L = 4096 (256 blocks) at B = 64, G = 2 gives 256 wide tiles, the wide tile;
    at B = 1 (4 tiles) or B = 16 (64), the narrow one, whose split keeps the SMs busy; below 128
    blocks or where 256 hidden units are not a whole number of steps, the narrow one."""
    monkeypatch.setattr(compress_triton, "sm_count", lambda device: 132)
    gpu, hidden = torch.device("cuda"), reference.WINDOW * 16
    assert compress_triton._launch(256, hidden, 128, gpu) == (*compress_triton._WIDE_TILE, 1)
    assert compress_triton._launch(128, hidden, 128, gpu) == (*compress_triton._WIDE_TILE, 1)  # 128 tiles: 0.97 of the SMs
    for blocks, sequences, width in [(256, 2, hidden), (256, 32, hidden), (127, 1024, hidden), (256, 128, 128)]:
        assert compress_triton._launch(blocks, width, sequences, gpu)[:3] == (64, compress_triton._HIDDEN_CHUNK, 4)


def test_outside_the_contract_is_the_reference() -> None:
    """A gradient wanted, or an MLP that is not BlossomRec's, takes the reference path."""
    positions, mlp = compressor(2, 16, 0)
    k = keys(2, 2, 48, 16, strided=False, seed=0).requires_grad_()
    got = compress_keys(k, positions, mlp)
    assert got.grad_fn is not None  # autograd recorded it: the reference ran
    got.sum().backward()
    assert k.grad is not None and mlp[0].weight.grad is not None
    other = nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 16))
    with torch.no_grad():
        torch.testing.assert_close(compress_keys(k, positions, other), reference.compress_keys(k, positions, other),
                                   rtol=0, atol=0)


GPU_CASES = [(seed, *case) for seed, case in enumerate(
    (random.Random(seed).choice([1, 2, 5]), random.Random(seed + 1).choice([1, 2]),
     random.Random(seed + 2).choice([1, 15, 16, 17, 200, 1000, 4097]) + random.Random(seed + 3).randrange(0, 40),
     random.Random(seed + 4).choice([8, 16, 32]), random.Random(seed + 5).choice([F16, BF16]),
     random.Random(seed + 6).random() < 0.5)
    for seed in range(30))]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("seed", "b", "g", "length", "d", "dtype", "strided"), GPU_CASES)
def test_compress_matches_reference_gpu(seed, b, g, length, d, dtype, strided) -> None:
    check(b, g, length, d, dtype, "cuda", strided, seed)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("length", "dtype", "strided"), [(4096, BF16, True), (2048 + 37, F16, False), (16 * 300, BF16, False)])
def test_compress_wide_tile_gpu(monkeypatch: pytest.MonkeyPatch, length: int, dtype: torch.dtype, strided: bool) -> None:
    """The wide tile compiled, which the random shapes above have too few tiles to take: B = 1, G = 2
    with the SM-share rule set aside; L = 4096 (two whole tiles of 128 blocks), 2085 (130 blocks: a
    partial second tile) and 4800 (300: a partial third)."""
    monkeypatch.setattr(compress_triton, "_WIDE_MIN_SM_SHARE", 0)
    check(1, 2, length, 16, dtype, "cuda", strided, seed=length)


@pytest.mark.gpu
@needs_cuda
def test_fp32_on_gpu_is_the_reference() -> None:
    """In fp32 on a GPU, cuBLAS is the faster path: the result is the reference's, bit for bit."""
    positions, mlp = compressor(2, 16, 0)
    mlp.cuda()
    k = keys(4, 2, 300, 16, strided=True, seed=0).cuda()
    with torch.no_grad():
        torch.testing.assert_close(compress_keys(k, positions.cuda(), mlp),
                                   reference.compress_keys(k, positions.cuda(), mlp), rtol=0, atol=0)
