"""STIS Triton kernel (blossom/attention/stis_triton.py) against reference.stis_attention.

Every case checks the output and dq, dk, dv with the flash-attention tolerance rule
(tolerance.py), and that right-padded positions get exact zeros (outputs, dq) and no gradient
(dk, dv). The CPU cases run in the Triton interpreter (small shapes: it is slow); the gpu set
(`pytest -m gpu` on a CUDA machine) draws 60 random shapes up to L = 4097 (on an H100 about
80 s, mostly Triton compiles).
"""

from __future__ import annotations


import pytest
import torch

from blossom.attention import reference
from blossom.attention.stis_triton import stis_attention

from .cases import BF16, F16, F32, Shape, check_branch, check_padding_never_read, gpu_case, inputs, needs_cuda

# The triton 3.6 interpreter converts a runtime loop bound with int() on a 1-element array.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def check_case(
    shape: Shape, dtype: torch.dtype, layout: str, lengths: list[int] | None, device: str, seed: int
) -> None:
    """The STIS kernel against the reference on one shape."""
    scale = reference.default_scale(shape[-1])
    check_branch(
        lambda q, k, v, seq_len: stis_attention(q, k, v, scale, seq_len),
        lambda q, k, v, seq_len: reference.stis_attention(q, k, v, scale, seq_len),
        inputs(shape, dtype, layout, device, seed), lengths, seed,
    )


# (B, H, G, L, d), dtype, layout, seq_len: every L of the brief, GQA 4:2 and 2:1, padding.
CPU_CASES = [
    ((1, 2, 1, 1, 16), F32, "contiguous", None),
    ((2, 4, 2, 7, 16), F16, "qkv", None),
    ((2, 4, 2, 8, 16), F32, "qkv", None),
    ((1, 2, 1, 9, 16), F16, "contiguous", None),
    ((2, 4, 2, 9, 16), F32, "qkv", [9, 8]),
    ((2, 4, 2, 16, 16), F32, "contiguous", [16, 5]),
    ((2, 2, 1, 17, 16), F32, "qkv", [17, 1]),
    ((2, 4, 2, 33, 16), F16, "qkv", [20, 3]),
    ((2, 4, 2, 33, 16), F32, "contiguous", None),
    ((2, 4, 2, 70, 16), F32, "qkv", [70, 2]),
    ((1, 2, 1, 70, 16), F16, "contiguous", None),
    ((2, 6, 2, 17, 32), F32, "qkv", [17, 11]),  # group of 3 (padded to 4 in-kernel), d = 32
    ((1, 4, 2, 24, 16), BF16, "qkv", [19]),
]


def _case_id(case: tuple) -> str:
    """B2-H4G2-L70-d16-float32-qkv-pad: readable test ids."""
    (b, h, g, length, d), dtype, layout, lengths = case
    return f"B{b}-H{h}G{g}-L{length}-d{d}-{str(dtype)[6:]}-{layout}" + ("-pad" if lengths else "")


@pytest.mark.parametrize(("shape", "dtype", "layout", "lengths"), CPU_CASES, ids=map(_case_id, CPU_CASES))
def test_matches_reference(shape, dtype, layout, lengths) -> None:
    check_case(shape, dtype, layout, lengths, "cpu", seed=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_padding_is_never_read(device: str) -> None:
    """NaN in the padded part of k and v reaches no valid output and no gradient."""
    scale = reference.default_scale(16)
    check_padding_never_read(lambda q, k, v, n: stis_attention(q, k, v, scale, n), (2, 4, 2, 40, 16), [40, 6], device)


def test_rejects_badinputs() -> None:
    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 3, 8, 16)
    with pytest.raises(ValueError, match="GQA"):
        stis_attention(q, k, k, 0.25)
    with pytest.raises(ValueError, match="share"):
        stis_attention(q, q[:, :2].half(), q[:, :2].half(), 0.25)
    with pytest.raises(ValueError, match="seq_len"):
        stis_attention(q, q[:, :2], q[:, :2], 0.25, torch.tensor([8, 8]))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(60))
def test_gpu_random_shapes(index: int) -> None:
    shape, dtype, layout, lengths = gpu_case(index, seed=0)
    check_case(shape, dtype, layout, lengths, "cuda", seed=index)
