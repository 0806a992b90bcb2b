"""Both branches in one Function (blossom/attention/branches_triton.py) against the references,
and `attend` (branches, gate, projection), whose forward computes both branches and the gate in
one kernel and whose backward folds the gate into the branches' backward kernels.

The outputs are checked through a fixed mix 0.75 * ltis - 1.5 * stis, so a swapped output or a
gradient sent to the wrong branch fails, and dq, dk, dv must be the sum of both branches'
gradients (the LTIS kernels add theirs into the STIS buffers in place). Flash-attention
tolerance rule (tolerance.py); CPU cases in the Triton interpreter, a gpu set of random shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from blossom.attention import ltis_triton, reference, stis_triton
from blossom.attention.branches_triton import attend, both_branches
from blossom.attention.gate_triton import gated_merge

from .cases import BF16, F16, F32, check_branch, gpu_case, inputs, needs_cuda
from .tolerance import assert_close_to_reference
from .test_ltis import SCALE, check_padding_with_selection, deterministic_algorithms, make_block_idx

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def _mix(ltis: Tensor, stis: Tensor) -> Tensor:
    return 0.75 * ltis - 1.5 * stis


def check_case(shape, dtype, layout: str, lengths: list[int] | None, device: str, seed: int) -> None:
    qkv = inputs(shape, dtype, layout, device, seed)
    block_idx = make_block_idx(qkv[0], shape[2], reference.NUM_SELECTED, drop=0.2, seed=seed)

    def reference_pair(q, k, v, seq_len):
        ltis = reference.ltis_attention(q, k, v, block_idx, SCALE, seq_len)
        return _mix(ltis, reference.stis_attention(q, k, v, SCALE, seq_len))

    check_branch(lambda q, k, v, seq_len: _mix(*both_branches(q, k, v, block_idx, SCALE, seq_len)),
                 reference_pair, qkv, lengths, seed)


CPU_CASES = [  # L = 1 and 15: no selectable block, the LTIS backward skips the inversion
    ((1, 2, 1, 1, 16), F32, "contiguous", None),
    ((2, 4, 2, 15, 16), F32, "qkv", [15, 4]),
    ((2, 4, 2, 40, 16), F32, "qkv", [40, 9]),
    ((1, 2, 1, 20, 16), F16, "contiguous", None),
    ((1, 4, 2, 36, 16), BF16, "qkv", [30]),
    ((2, 2, 2, 90, 16), F32, "contiguous", [90, 77]),  # H = G: 16 queries per program, a 32-key STIS window
]


@pytest.mark.parametrize(("shape", "dtype", "layout", "lengths"), CPU_CASES)
def test_matches_reference(shape, dtype, layout, lengths) -> None:
    check_case(shape, dtype, layout, lengths, "cpu", seed=0)


@pytest.mark.parametrize(("width", "shape"), [
    (16, (1, 4, 2, 90, 16)),  # 3 powers of two in a 16-wide tile (the width from L = 4097 on)
    (4, (1, 2, 1, 260, 16)),  # 5 powers of two in 4-wide tiles: two steps, the second mostly empty
])
def test_stis_far_width(monkeypatch: pytest.MonkeyPatch, width: int, shape) -> None:
    """STIS's powers of two as slot tiles of another width than the length's own (_far_width):
    the forward and the dq kernel still meet the reference, across tiles and with empty columns."""
    monkeypatch.setattr(ltis_triton, "_far_width", lambda length: width)
    check_case(shape, F32, "qkv", None, "cpu", seed=2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_padding_is_never_read(device: str) -> None:
    check_padding_with_selection(lambda q, k, v, idx, n: _mix(*both_branches(q, k, v, idx, SCALE, n)), device)


def _backward_inputs() -> tuple[Tensor, ...]:
    """q, k, an output laid out [B, L, H, d], its logsumexp and a block index, for the launchers' refusals."""
    out = torch.zeros(1, 8, 4, 16).transpose(1, 2)
    block_idx = torch.zeros(1, 2, 8, reference.NUM_SELECTED, dtype=torch.int32)
    return torch.zeros(1, 4, 8, 16), torch.zeros(1, 2, 8, 16), out, torch.zeros(1, 4, 8), block_idx


def test_accumulation_target_must_match_the_layout() -> None:
    """Adding into buffers of another layout would scatter the sum, into a 16-bit dq would drop the
    atomics' fp32 sums: refused before any launch."""
    q, k, out, lse, block_idx = _backward_inputs()
    dk = torch.zeros(1, 8, 2, 16).transpose(1, 2)
    wrong = (torch.zeros(1, 4, 8, 16), dk, dk)  # dq not laid out like out
    with pytest.raises(ValueError, match="laid out"):
        ltis_triton.launch_backward(q, k, k, block_idx, None, out, lse, out, SCALE, add_to=wrong)
    with pytest.raises(ValueError, match="fp32"):
        dq16 = torch.zeros_like(out, dtype=torch.bfloat16)
        ltis_triton.launch_backward(q, k, k, block_idx, None, out, lse, out, SCALE, add_to=(dq16, dk, dk))


def test_ltis_rows_are_prepared_only_under_the_gate() -> None:
    """The STIS dq kernel writes LTIS's delta and gates only where LTIS's own kernels would not: with
    the gate (its logits' gradient) and the atomics; elsewhere the offer is refused before any launch."""
    q, k, out, lse, block_idx = _backward_inputs()
    rows = (torch.empty_like(lse), torch.empty_like(lse))
    with pytest.raises(ValueError, match="under the gate"):
        stis_triton.launch_backward(q, k, k, None, out, lse, out, SCALE, ltis=(out, *rows))
    with pytest.raises(ValueError, match="gated atomics path"):
        ltis_triton.launch_backward(q, k, k, block_idx, None, out, lse, out, SCALE, prepared=rows)


def test_stis_window_moves_only_on_the_gated_atomics_path() -> None:
    """STIS's window moves to the LTIS dk/dv kernel only where that kernel reads one dO for both
    branches and adds to STIS's gradients (the gate, the atomics, the rows the STIS dq kernel
    prepared); elsewhere the offer is refused before any launch, on either side."""
    q, k, out, lse, block_idx = _backward_inputs()
    rows = (torch.empty_like(lse), torch.empty_like(lse))
    with pytest.raises(ValueError, match="prepares LTIS's rows"):
        stis_triton.launch_backward(q, k, k, None, out, lse, out, SCALE, window_to_ltis=rows)
    with pytest.raises(ValueError, match="STIS's window"):
        ltis_triton.launch_backward(q, k, k, block_idx, None, out, lse, out, SCALE, stis_window=(lse, *rows))


def test_logits_gradient_must_share_the_logits_layout() -> None:
    """The kernels index the logits' gradient with the logits' strides: another layout is refused
    before any launch."""
    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 2, 8, 16)
    out, lse = torch.zeros(1, 8, 4, 16).transpose(1, 2), torch.zeros(1, 4, 8)
    gl = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="share their strides"):
        stis_triton.launch_backward(q, k, k, None, out, lse, out, SCALE, gate=(gl, torch.zeros(8, 8).t()))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(12))
def test_gpu_random_shapes(index: int) -> None:
    """12 of the GPU case list's shapes (the issue's edge lengths first): each branch has its own 60."""
    check_case(*gpu_case(index, seed=2000), "cuda", seed=index)


def check_attend(shape, dtype, layout: str, lengths: list[int] | None, device: str, seed: int,
                 logit_scale: float = 1.0) -> None:
    """attend gives gated_merge(*both_branches) bit for bit without autograd (the gate fused into
    the branches' forward kernel) and, with it, the same output and projection weight gradient
    bit for bit; the gradients of q, k, v and the gate logits, which its backward kernels compute
    with the gates folded in (dO never rounded to the input dtype), meet the tolerance rule
    against the fp64 and same-dtype references, and are exactly 0 past seq_len."""
    q, k, v = inputs(shape, dtype, layout, device, seed)
    b, h, _, length, d = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    gate_logits = (logit_scale * torch.randn(b, length, 2 * h, generator=gen, device=device)).to(dtype)
    weight = torch.randn(32, h * d, generator=gen, device=device).to(dtype)
    block_idx = make_block_idx(q, shape[2], reference.NUM_SELECTED, drop=0.2, seed=seed)
    seq_len = None if lengths is None else torch.tensor(lengths, device=device)
    args = (q, k, v, block_idx, SCALE, seq_len, gate_logits, weight)
    with torch.no_grad():
        fused = attend(*args)
        unfused = gated_merge(*both_branches(q, k, v, block_idx, SCALE, seq_len), gate_logits, weight)
    assert fused.shape == (b, length, 32)
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0)

    def unfused_path(q, k, v, gl, w):
        return gated_merge(*both_branches(q, k, v, block_idx, SCALE, seq_len), gl, w)

    def reference_path(q, k, v, gl, w):
        ltis = reference.ltis_attention(q, k, v, block_idx, SCALE, seq_len)
        return reference.gated_merge(ltis, reference.stis_attention(q, k, v, SCALE, seq_len), gl, w)

    dout = torch.randn(b, length, 32, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    runs = {}
    for name, path, as_type in (("fused", lambda *a: attend(*a[:3], block_idx, SCALE, seq_len, *a[3:]), dtype),
                                ("unfused", unfused_path, dtype), ("same", reference_path, dtype),
                                ("fp64", reference_path, torch.float64)):
        leaves = [t.detach().to(as_type).requires_grad_() for t in (q, k, v, gate_logits, weight)]
        out = path(*leaves)
        runs[name] = [out.detach(), *torch.autograd.grad(out, leaves, dout.to(out.dtype))]
    names = ("out", "dq", "dk", "dv", "dgate_logits", "dweight")
    for name, got, want in zip(names, runs["fused"], runs["unfused"], strict=True):
        if name in ("out", "dweight"):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    for name, got, same, ref in zip(names, runs["fused"], runs["same"], runs["fp64"], strict=True):
        assert_close_to_reference(name, got, same, ref)
    for name, value in zip(names[1:5], runs["fused"][1:5]):
        for batch, n in enumerate(lengths or []):
            past = value[batch, :, n:] if name != "dgate_logits" else value[batch, n:]
            assert not past.any(), f"{name} is not 0 past seq_len {n} (batch {batch})"


@pytest.mark.parametrize(("shape", "dtype", "layout", "lengths"), [
    ((2, 4, 2, 40, 16), F32, "qkv", [40, 9]),  # GQA, padding, selection
    ((1, 2, 1, 15, 16), F32, "contiguous", None),  # no selectable block
    ((1, 6, 2, 20, 16), F32, "qkv", [20]),  # 3 heads per group: a padded head slot
])
def test_attend_fuses_the_gate(shape, dtype, layout, lengths) -> None:
    check_attend(shape, dtype, layout, lengths, "cpu", seed=1)


def test_attend_with_saturated_gates() -> None:
    """Gate logits of +-1e4 make most gates exactly 0 or 1 (fp32 sigmoid): a branch whose gate is 0
    passes no gradient through its rows, and every gradient stays finite and meets the references."""
    check_attend((2, 4, 2, 40, 16), F32, "qkv", [40, 9], "cpu", seed=1, logit_scale=1e4)


def test_both_forward_keeps_the_branches_without_a_gate() -> None:
    q, k = torch.zeros(1, 4, 32, 16), torch.zeros(1, 2, 32, 16)
    idx = torch.full((1, 2, 32, 2), -1, dtype=torch.int32)
    with pytest.raises(ValueError, match="no mix"):
        ltis_triton.launch_both_forward(q, k, k, idx, SCALE, None, keep_branches=False)


def test_attend_checks_the_gate_inputs() -> None:
    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 2, 8, 16)
    idx = torch.full((1, 2, 8, 0), -1, dtype=torch.int32)
    with torch.no_grad(), pytest.raises(ValueError, match="gate logits"):
        attend(q, k, k, idx, SCALE, None, torch.zeros(1, 8, 4), torch.zeros(32, 64))
    with torch.no_grad(), pytest.raises(ValueError, match="projection weight"):
        attend(q, k, k, idx, SCALE, None, torch.zeros(1, 8, 8), torch.zeros(32, 16))


@pytest.mark.parametrize(("shape", "dtype", "layout", "lengths"), [CPU_CASES[2], ((1, 6, 2, 20, 16), F32, "qkv", [20])])
def test_deterministic_path_matches_reference(shape, dtype, layout, lengths) -> None:
    """Under deterministic algorithms the LTIS dq kernel adds to the STIS branch's dq (no atomics,
    and LTIS writes its own delta and gates): both branches and attend meet the tolerance rule."""
    with deterministic_algorithms():
        check_case(shape, dtype, layout, lengths, "cpu", seed=0)
        check_attend(shape, dtype, layout, lengths, "cpu", seed=1)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(12))
def test_attend_gpu_random_shapes(index: int) -> None:
    """12 random shapes; every fourth under deterministic algorithms as well (the other backward path)."""
    check_attend(*gpu_case(index, seed=3000), "cuda", seed=index)
    if index % 4 == 0:
        with deterministic_algorithms():
            check_attend(*gpu_case(index, seed=3000), "cuda", seed=index)
