"""The flash-attention tolerance rule for kernel tests (DESIGN.md section 3).

A kernel in dtype X may be off from the fp64 reference by at most twice what the same reference
computed in dtype X is off, plus a small floor: the bound follows the dtype's real rounding
instead of a hand-tuned constant per shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Floors for values of order 1 (the tests draw unit-variance inputs).
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_close_to_reference(name: str, actual: Tensor, ref_same: Tensor, ref64: Tensor) -> None:
    """max|actual - ref64| <= 2 * max|ref_same - ref64| + ATOL[actual.dtype]; NaN always fails."""
    assert actual.shape == ref64.shape == ref_same.shape, f"{name}: shapes {actual.shape}, {ref_same.shape}, {ref64.shape}"
    if actual.numel() == 0:
        return
    err = (actual.double() - ref64).abs().max().item()
    ref_err = (ref_same.double() - ref64).abs().max().item()
    bound = 2 * ref_err + ATOL[actual.dtype]
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (same-dtype reference error {ref_err:.3g})"
