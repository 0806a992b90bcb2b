"""LTIS Triton kernels (blossom/attention/ltis_triton.py) against the reference.

Selection: the kernel's top-n equals reference.select_blocks(block_importance(...)) up to swaps
of blocks whose probabilities agree to 1e-6 (1e-5 on a GPU; rounding can order near-ties either way), plus
hand-built cases with a known answer, by either path (packed keys, or the exact lists alone); the
packed path hands near-ties to the exact one. Attention: output and dq, dk, dv against the reference
given the same block_idx (with -1 slots), with the flash-attention tolerance rule
(tolerance.py); right-padded positions get exact zeros and no gradient; NaN in padded k/v never
reaches anything. dq comes from the dk/dv kernel's fp32 atomics, or, under
torch.use_deterministic_algorithms, from the dq kernel: both paths are checked, and against
each other. CPU cases run in the Triton interpreter (small shapes: it is slow); the gpu
set (`pytest -m gpu` on a CUDA machine) draws 60 random shapes up to L = 4097.
"""

from __future__ import annotations


import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import triton
from torch import Tensor

from blossom.attention import ltis_triton, reference
from blossom.attention.ltis_triton import ltis_attention, select_blocks

from .cases import BF16, F16, F32, check_branch, check_padding_never_read, gpu_case, inputs, needs_cuda

SCALE = 0.25


@pytest.fixture(params=["exact", "packed"])
def selection_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """select_blocks by the exact path alone, or the packed path first at every length."""
    monkeypatch.setattr(ltis_triton, "_PACKED_MIN_BLOCKS", 10**9 if request.param == "exact" else 0)
    return request.param


# ------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------


def assert_same_selection(got: Tensor, q: Tensor, ck: Tensor, num_selected: int) -> None:
    """got equals the reference selection, except in slots where both picks' probabilities agree
    to 1e-6 relative (an unused slot counts as probability KEEP_PROB); 1e-5 on a GPU, where fp32
    inputs' logits are 3xTF32 products (relative error ~1e-6 per logit, up to ~2.5e-6 here)."""
    importance = reference.block_importance(q, ck, SCALE)
    want = reference.select_blocks(importance, num_selected)
    assert got.shape == want.shape and not got.is_floating_point()
    got = got.long()
    if torch.equal(got, want):
        return
    null = importance.new_full(importance.shape[:-1] + (1,), reference.NULL_LOGIT)
    probs = torch.softmax(torch.cat([importance, null], dim=-1), dim=-1).double()

    def prob_of(idx: Tensor) -> Tensor:
        return torch.where(idx >= 0, probs.gather(-1, idx.clamp(min=0)), reference.KEEP_PROB)

    differ = got != want
    p_got, p_want = prob_of(got)[differ], prob_of(want)[differ]
    rel = (p_got - p_want).abs() / torch.maximum(p_got, p_want)
    tolerance = 1e-5 if got.is_cuda else 1e-6
    assert rel.max() <= tolerance, f"{differ.sum()} slots differ, worst relative probability gap {rel.max():.3g}"


# (B, H, G, L, d), num_selected
SELECT_CASES = [
    ((1, 2, 1, 1, 16), 4),
    ((2, 4, 2, 15, 16), 4),
    ((2, 4, 2, 16, 16), 4),
    ((2, 4, 2, 17, 16), 4),
    ((2, 4, 2, 100, 16), 4),
    ((1, 4, 2, 300, 16), 4),
    ((1, 4, 2, 300, 16), 1),
    ((1, 6, 2, 130, 32), 6),  # group of 3, d = 32, more slots than the default
    ((1, 8, 8, 90, 64), 3),
    ((1, 2, 1, 70, 8), 4),  # d = 8: padded to 16 in-kernel
]


@pytest.mark.usefixtures("selection_path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("shape", "num_selected"), SELECT_CASES)
def test_select_matches_reference(shape, num_selected, dtype) -> None:
    """fp32 inputs take the heads' mean, bf16 ones the heads stacked along the product's depth
    (a group of 3 padded to 4 in the (1, 6, 2, ...) case)."""
    b, h, g, length, d = shape
    gen = torch.Generator().manual_seed(length)
    q = torch.randn(b, h, length, d, generator=gen).to(dtype)
    ck = torch.randn(b, g, length // reference.BLOCK, d, generator=gen).to(dtype)
    assert_same_selection(select_blocks(q, ck, SCALE, num_selected), q, ck, num_selected)


@pytest.mark.usefixtures("selection_path")
def test_select_fp16_matches_reference() -> None:
    """fp16 takes the stacked path as bf16 does, on fp16 tensor cores on a GPU."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 8, 500, 16, generator=gen).half()
    ck = torch.randn(2, 2, 31, 16, generator=gen).half()
    assert_same_selection(select_blocks(q, ck, SCALE, 4), q, ck, 4)


@pytest.mark.usefixtures("selection_path")
@pytest.mark.parametrize("rising", [False, True])
def test_select_one_column_holds_the_top(rising: bool) -> None:
    """Blocks 2, 18, 34, 50 and 66 share column 2 of the 16-block chunks and beat every other
    block: the row's top 4 all come from that column's list, in either arrival order, and the
    fifth is left out."""
    q, ck = _aligned(1100, -1, 0.0)
    column = [2, 18, 34, 50, 66]
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5] if rising else [5.0, 4.0, 3.0, 2.0, 1.0])
    ck[:, :, column, 0] = logits / SCALE
    got = select_blocks(q, ck, SCALE, 4)
    assert got[0, 0, 1099].tolist() == ([50, 34, 18, 2] if rising else [2, 18, 34, 50])
    assert_same_selection(got, q, ck, 4)


@pytest.mark.usefixtures("selection_path")
def test_select_small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-query tiles: many programs per sequence, each keeping its columns' lists across 3
    chunks (nb = 37); inputs strided."""
    monkeypatch.setattr(ltis_triton, "_select_tiles", lambda length, num_blocks: (16, 16))
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 600, 4, 16, generator=gen).transpose(1, 2)
    ck = torch.randn(1, 16, 37, 2, generator=gen).permute(0, 3, 2, 1)
    assert_same_selection(select_blocks(q, ck, SCALE, 4), q, ck, 4)


def _aligned(length: int, hot_block: int, hot_logit: float) -> tuple[Tensor, Tensor]:
    """q all e_0, ck all 0 except block hot_block = hot_logit / SCALE * e_0: every logit is 0
    except that block's, identical for every query and head."""
    num_blocks = length // reference.BLOCK
    q = torch.zeros(1, 4, length, 16)
    q[..., 0] = 1.0
    ck = torch.zeros(1, 2, num_blocks, 16)
    if hot_block >= 0:
        ck[:, :, hot_block, 0] = hot_logit / SCALE
    return q, ck


@pytest.mark.usefixtures("selection_path")
def test_select_ties_go_to_lower_index() -> None:
    q, ck = _aligned(100, -1, 0.0)
    got = select_blocks(q, ck, SCALE, 4)
    assert got[0, 0, 99].tolist() == [0, 1, 2, 3]  # 6 equal visible blocks
    assert got[0, 1, 47].tolist() == [0, 1, -1, -1]  # block 2 ends at 47: not visible to 47
    assert got[0, 1, 48].tolist() == [0, 1, 2, -1]
    assert got[0, 0, 20].tolist() == [0, -1, -1, -1]
    assert (got[0, :, :16] == -1).all()  # nothing visible before position 16


@pytest.mark.usefixtures("selection_path")
def test_select_hot_block() -> None:
    """A moderate winner leads and the rest follow by index; a huge one pushes every other
    block under the keep threshold (probability e^-30 < 1e-10); before it is visible, it is not chosen."""
    q, ck = _aligned(100, 3, 10.0)
    got = select_blocks(q, ck, SCALE, 4)
    assert got[0, 0, 64].tolist() == [3, 0, 1, 2]
    assert got[0, 0, 63].tolist() == [0, 1, 2, -1]
    q, ck = _aligned(100, 3, 30.0)
    got = select_blocks(q, ck, SCALE, 4)
    assert got[0, 1, 99].tolist() == [3, -1, -1, -1]
    assert got[0, 1, 63].tolist() == [0, 1, 2, -1]


@pytest.mark.usefixtures("selection_path")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_select_keep_threshold_needs_the_denominator(device: str) -> None:
    """A slot whose probability is near KEEP_PROB only relative to the max: e^-22 = 2.8e-10 of the
    max's weight is kept (probability 2.8e-10 / (1 + e^-22)) where the max stands alone, and
    dropped (9.3e-11) where two more blocks tie with the max (denominator 3), though it is the
    same logit gap. The kernel's bounds leave both open: only the exact denominator decides."""
    q, ck = _aligned(100, -1, 0.0)  # 6 blocks, all logits 0
    ck[0, 0, :, 0] = torch.tensor([0.0, -40.0, -41.0, -42.0, -43.0, -22.0]) / SCALE  # max alone, no ties
    ck[0, 1, :, 0] = torch.tensor([0.0, 0.0, 0.0, -40.0, -40.0, -22.0]) / SCALE  # max three times
    got = select_blocks(q.to(device), ck.to(device), SCALE, 4).cpu()
    assert got[0, 0, 99].tolist() == [0, 5, -1, -1]
    assert got[0, 1, 99].tolist() == [0, 1, 2, -1]
    assert_same_selection(got, q, ck, 4)


@pytest.mark.usefixtures("selection_path")
def test_select_null_logit_wins() -> None:
    """Logits far below the null logit (-1e3): every probability is ~e^-1000, so no slot is kept."""
    q, ck = _aligned(64, -1, 0.0)
    ck[..., 0] = -2000.0 / SCALE
    assert (select_blocks(q, ck, SCALE, 4) == -1).all()


@pytest.mark.usefixtures("selection_path")
def test_select_short_sequences() -> None:
    """L < 16: no blocks, n = 0 columns. L = 17: one block, visible only to position 16."""
    q = torch.randn(2, 4, 15, 16)
    assert select_blocks(q, torch.zeros(2, 2, 0, 16), SCALE, 4).shape == (2, 2, 15, 0)
    q, ck = _aligned(17, -1, 0.0)
    got = select_blocks(q, ck, SCALE, 4)
    assert got.shape == (1, 2, 17, 1)
    assert got[0, :, 16, 0].tolist() == [0, 0] and (got[0, :, :16] == -1).all()


def _select_on_paths(q: Tensor, ck: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(packed path's answer, which of its programs it redid exactly, exact path's answer)."""
    programs = triton.cdiv(q.shape[2], ltis_triton._select_tiles(q.shape[2], ck.shape[2])[0]) * q.shape[0] * ck.shape[1]
    redone = torch.full((programs,), -1, dtype=torch.int32, device=q.device)
    got = ltis_triton._selection(q, ck, SCALE, 4, packed=True, redone=redone)
    return got, redone, ltis_triton._selection(q, ck, SCALE, 4, packed=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_packed_path_answers_random_tiles(dtype: torch.dtype) -> None:
    """Random logits (3 chunks of blocks): the packed keys order every row's 5 best without doubt,
    so no tile is redone, and the answer is the exact path's."""
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, 8, 700, 16, generator=gen).to(dtype)
    ck = torch.randn(2, 2, 43, 16, generator=gen).to(dtype)
    got, redone, exact = _select_on_paths(q, ck)
    assert redone.tolist() == [0] * redone.numel()
    assert torch.equal(got, exact)


@pytest.mark.parametrize(("sign", "want"), [(1.0, [19, 3, 0, 1]), (-1.0, [3, 19, 0, 1])])
def test_select_near_tie_goes_to_the_exact_path(sign: float, want: list[int]) -> None:
    """Blocks 3 and 19 (column 3 of chunks 0 and 1) have logits +-1 and the fp32 number next to it
    further from 0, differing in the very bit the packed keys give to the chunk: packed, they would
    come out in the wrong order. The tile is redone exactly and they come out right; the other
    blocks trail at -5 - j / 10."""
    q, ck = _aligned(400, -1, 0.0)
    logits = -5.0 - torch.arange(25, dtype=torch.float32) / 10
    logits[3] = sign
    logits[19] = torch.nextafter(torch.tensor(sign), torch.tensor(sign * math.inf))
    ck[:, :, :, 0] = logits / SCALE
    got, redone, exact = _select_on_paths(q, ck)
    assert got[0, :, 399].tolist() == [want, want]
    assert redone.view(2, -1)[:, -1].tolist() == [1, 1]  # the tile of rows 384 .. 399, both kv heads
    assert torch.equal(got, exact)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length", [2048, 4097, 8192])
def test_gpu_select_paths_agree(length: int, dtype: torch.dtype) -> None:
    """Random inputs where select_blocks takes the packed path: its answer is the exact path's, bit
    for bit, and the reference's up to near-ties; under 5% of its tiles redone."""
    gen = torch.Generator().manual_seed(length)
    q = torch.randn(8, 8, length, 16, generator=gen).to(dtype).cuda()
    ck = torch.randn(8, 2, length // 16, 16, generator=gen).to(dtype).cuda()
    got, redone, exact = _select_on_paths(q, ck)
    assert torch.equal(got, exact)
    assert 0 <= redone.float().mean().item() < 0.05
    assert_same_selection(got, q, ck, 4)


# ------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------


def make_block_idx(q: Tensor, num_kv: int, num_selected: int, drop: float, seed: int) -> Tensor:
    """A realistic selection (reference top-n of random compressed keys) with a fraction `drop`
    of the slots then set to -1, anywhere in the row."""
    b, _, length, d = q.shape
    gen = torch.Generator(device=q.device).manual_seed(seed)
    ck = torch.randn(b, num_kv, length // reference.BLOCK, d, generator=gen, device=q.device)
    idx = reference.select_blocks(reference.block_importance(q.detach(), ck, SCALE), num_selected)
    dropped = torch.rand(idx.shape, generator=gen, device=q.device) < drop
    return idx.masked_fill(dropped, -1)


def check_case(shape, dtype, layout: str, lengths: list[int] | None, device: str, seed: int) -> None:
    """The LTIS attention kernel against the reference on one shape, with random selections."""
    qkv = inputs(shape, dtype, layout, device, seed)
    block_idx = make_block_idx(qkv[0], shape[2], reference.NUM_SELECTED, drop=0.2, seed=seed)
    check_branch(
        lambda q, k, v, seq_len: ltis_attention(q, k, v, block_idx, SCALE, seq_len),
        lambda q, k, v, seq_len: reference.ltis_attention(q, k, v, block_idx, SCALE, seq_len),
        qkv, lengths, seed,
    )


# (B, H, G, L, d), dtype, layout, seq_len: L < 16 (own block only), L = 16 and 17 (one block),
# selection that bites (L >= 80), a mostly-padded sequence, GQA 4:2, 2:1 and 3:1, d = 32.
CPU_CASES = [
    ((1, 2, 1, 1, 16), F32, "contiguous", None),
    ((2, 4, 2, 15, 16), F16, "qkv", [15, 4]),
    ((1, 2, 1, 16, 16), F32, "qkv", None),
    ((2, 2, 1, 17, 16), F32, "contiguous", [17, 16]),
    ((1, 4, 2, 50, 16), F16, "contiguous", None),
    ((2, 4, 2, 100, 16), F32, "qkv", [100, 7]),
    ((1, 6, 2, 40, 32), F32, "qkv", [33]),
    ((1, 4, 2, 40, 16), BF16, "qkv", [35]),
    ((1, 4, 2, 36, 8), F32, "contiguous", [30]),  # d = 8: padded to 16 in-kernel
]


@pytest.mark.parametrize(("shape", "dtype", "layout", "lengths"), CPU_CASES)
def test_attention_matches_reference(shape, dtype, layout, lengths) -> None:
    check_case(shape, dtype, layout, lengths, "cpu", seed=0)


def check_padding_with_selection(attend: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor], device: str) -> None:
    """NaN in the padded part of k and v reaches no valid output and no gradient of
    attend(q, k, v, block_idx, seq_len), under a selection that also picks padded blocks."""
    shape, lengths = (2, 4, 2, 48, 16), [48, 21]
    block_idx = make_block_idx(inputs(shape, F32, "contiguous", device, seed=3)[0], 2, 4, drop=0.0, seed=3)
    check_padding_never_read(lambda q, k, v, n: attend(q, k, v, block_idx, n), shape, lengths, device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_padding_is_never_read(device: str) -> None:
    check_padding_with_selection(lambda q, k, v, idx, n: ltis_attention(q, k, v, idx, SCALE, n), device)


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """torch.use_deterministic_algorithms(True) inside; warn_only, or the references' cuBLAS
    products on a GPU would need CUBLAS_WORKSPACE_CONFIG."""
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.fixture
def deterministic() -> Iterator[None]:
    with deterministic_algorithms():
        yield


@pytest.mark.parametrize(("shape", "dtype", "layout", "lengths"), [CPU_CASES[i] for i in (1, 5, 7)])
def test_deterministic_path_matches_reference(shape, dtype, layout, lengths, deterministic: None) -> None:
    check_case(shape, dtype, layout, lengths, "cpu", seed=0)


def backward_both_ways(shape, dtype, lengths: list[int], device: str, seed: int) -> tuple[tuple[Tensor, ...], ...]:
    """launch_backward's (dq, dk, dv, the logits' gradient) on one gated case: with atomics, then
    twice under deterministic algorithms."""
    q, k, v = inputs(shape, dtype, "qkv", device, seed)
    b, h, _, length, _ = shape
    block_idx = make_block_idx(q, shape[2], reference.NUM_SELECTED, drop=0.2, seed=seed)
    seq_len = torch.tensor(lengths, device=device, dtype=torch.int32)
    out, lse = ltis_triton.launch_forward(q, k, v, block_idx, SCALE, seq_len)
    gen = torch.Generator(device=device).manual_seed(seed)
    dmix = torch.randn(out.shape, generator=gen, device=device).to(dtype)
    logits = torch.randn(b * length, 2 * h, generator=gen, device=device).to(dtype)

    def backward() -> tuple[Tensor, ...]:
        dgl = torch.zeros_like(logits)
        return *ltis_triton.launch_backward(q, k, v, block_idx, seq_len, out, lse, dmix, SCALE, gate=(logits, dgl)), dgl

    atomics = backward()
    with deterministic_algorithms():
        return atomics, backward(), backward()


def check_dq_paths(shape, dtype, lengths: list[int], device: str, seed: int) -> None:
    """The two dq paths agree: dq to the inputs' rounding (fp32 with atomics, the inputs' dtype
    from the dq kernel, which also rounds the gated dO first), dk, dv and the logits' gradient
    bit for bit (the same kernels compute them both ways); the deterministic path repeats itself
    bit for bit."""
    atomics, det, again = backward_both_ways(shape, dtype, lengths, device, seed)
    assert atomics[0].dtype == torch.float32 and det[0].dtype == dtype
    tol = {F32: 1e-5, F16: 2e-3, BF16: 2e-2}[dtype]
    torch.testing.assert_close(atomics[0], det[0].float(), rtol=tol, atol=tol)
    for name, x, y, z in zip(("dq", "dk", "dv", "dgl"), atomics, det, again):
        assert torch.equal(y, z), f"{name} differs between two deterministic runs"
        if name != "dq":
            assert torch.equal(x, y), f"{name} differs between the dq paths"


@pytest.mark.parametrize(("shape", "dtype"), [((2, 4, 2, 50, 16), F32), ((1, 2, 1, 40, 16), F16)])
def test_dq_paths_agree(shape, dtype) -> None:
    check_dq_paths(shape, dtype, [shape[3], 23][: shape[0]], "cpu", seed=0)


def test_rejects_badinputs() -> None:
    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 3, 8, 16)
    idx = torch.zeros(1, 2, 8, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="GQA"):
        ltis_attention(q, k, k, idx, SCALE)
    with pytest.raises(ValueError, match="share"):
        ltis_attention(q, q[:, :2].half(), q[:, :2].half(), idx, SCALE)
    with pytest.raises(ValueError, match="block_idx"):
        ltis_attention(q, q[:, :2], q[:, :2], idx.float(), SCALE)
    wide = torch.zeros(1, 4, 8, 256)
    with pytest.raises(ValueError, match="head dim"):
        ltis_attention(wide, wide[:, :2], wide[:, :2], idx, SCALE)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(60))
def test_gpu_random_shapes(index: int) -> None:
    shape, dtype, layout, lengths = gpu_case(index, seed=1000)
    b, h, g, length, d = shape
    gen = torch.Generator(device="cuda").manual_seed(index)
    q = torch.randn(b, h, length, d, generator=gen, device="cuda").to(dtype)
    ck = torch.randn(b, g, length // reference.BLOCK, d, generator=gen, device="cuda").to(dtype)
    assert_same_selection(select_blocks(q, ck, SCALE, 4), q, ck, 4)
    check_case(shape, dtype, layout, lengths, "cuda", seed=index)
    if index % 6 == 0:  # ten of the shapes: the deterministic dq path too
        check_dq_paths(shape, dtype, lengths or [length] * b, "cuda", seed=index)
