"""The fused glue kernels against their references: head split + RoPE (rotary_triton.py), with
the qkv and gate projections in front of it (project_split_rope), and the sigmoid gate with the
output projection (gate_triton.py).

Outputs and every input gradient follow the flash-attention tolerance rule (tolerance.py) against
the same-dtype and fp64 references. Inputs come in the layouts the model hands over (the
projection's rows, the branch kernels' [B, L, H, d] buffers) and in other strides, since autograd
may pass gradients of any layout. CPU cases run in the Triton interpreter; the gpu set draws 50
random shapes per kernel.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from torch import Tensor

from blossom.attention import gate_triton, reference, rotary_triton
from blossom.attention.gate_triton import gated_merge, mixed_weight_grad
from blossom.attention.rotary_triton import project_split_rope, split_heads_rope
from blossom.attention.triton_common import device_lengths, empty_blhd, reg_cap

from .cases import BF16, F16, F32, needs_cuda
from .tolerance import assert_close_to_reference

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
Fn = Callable[..., Tensor | tuple[Tensor, ...]]


def _outputs(fn: Fn, args: list[Tensor], seed: int) -> list[Tensor]:
    """Outputs, then the gradient of every input, for random upstream gradients drawn from seed
    (the same for every fn with outputs of the same shapes)."""
    outs = fn(*args)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    gen = torch.Generator(device=args[0].device).manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, device=o.device).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, args, upstream)
    return [o.detach() for o in outs] + list(grads)


def check_against_reference(kernel: Fn, ref: Fn, args: list[Tensor], seed: int) -> None:
    """kernel(args) vs ref(args) and ref(args in fp64): outputs and input gradients."""
    got = _outputs(kernel, args, seed)
    same = _outputs(ref, args, seed)
    ref64 = _outputs(ref, [a.detach().double().requires_grad_() for a in args], seed)
    for n, (actual, s, r) in enumerate(zip(got, same, ref64)):
        assert_close_to_reference(f"tensor {n}", actual, s, r)


def rotary_args(b: int, length: int, h: int, g: int, d: int, dtype: torch.dtype, device: str, seed: int,
                strided: bool = False) -> list[Tensor]:
    """qkv [B, L, (H + 2G) d]; strided: a column slice of a wider buffer (rows not packed)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    width = (h + 2 * g) * d
    full = torch.randn(b, length, width + (8 if strided else 0), generator=gen, device=device).to(dtype)
    return [full[..., :width].detach().requires_grad_() if strided else full.requires_grad_()]


def gate_args(b: int, length: int, h: int, d: int, dtype: torch.dtype, device: str, seed: int) -> list[Tensor]:
    """ltis in the kernels' [B, L, H, d] storage, stis contiguous [B, H, L, d], logits [B, L, 2H],
    an output projection weight [H d + 8, H d] (not square: rows and columns are not mixed up)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    ltis = torch.randn(b, length, h, d, generator=gen, device=device).to(dtype).transpose(1, 2)
    stis = torch.randn(b, h, length, d, generator=gen, device=device).to(dtype)
    logits = (2 * torch.randn(b, length, 2 * h, generator=gen, device=device)).to(dtype)
    weight = (torch.randn(h * d + 8, h * d, generator=gen, device=device) / (h * d) ** 0.5).to(dtype)
    return [t.detach().requires_grad_() for t in (ltis, stis, logits, weight)]


def check_rotary(b, length, h, g, d, dtype, device, seed, strided=False) -> None:
    check_against_reference(
        lambda qkv: split_heads_rope(qkv, h, g), lambda qkv: reference.split_heads_rope(qkv, h, g),
        rotary_args(b, length, h, g, d, dtype, device, seed, strided), seed,
    )


def project_args(b: int, length: int, h: int, g: int, d: int, dtype: torch.dtype, device: str, seed: int,
                 strided: bool = False) -> list[Tensor]:
    """x [B, L, D] (D = H d + 8: no weight is square), W_qkv, W_gate [2H, D], b_gate; strided: x
    is a column slice of a wider buffer."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = h * d + 8
    full = torch.randn(b, length, hidden + (8 if strided else 0), generator=gen, device=device)
    x = full[..., :hidden]
    w_qkv, w_gate = (torch.randn(n, hidden, generator=gen, device=device) / hidden**0.5 for n in ((h + 2 * g) * d, 2 * h))
    b_gate = torch.randn(2 * h, generator=gen, device=device)
    return [t.to(dtype).detach().requires_grad_() for t in (x, w_qkv, w_gate, b_gate)]


def check_project(b, length, h, g, d, dtype, device, seed, strided=False) -> None:
    check_against_reference(
        lambda *a: project_split_rope(*a, h, g), lambda *a: reference.project_split_rope(*a, h, g),
        project_args(b, length, h, g, d, dtype, device, seed, strided), seed,
    )


def check_gate(b, length, h, d, dtype, device, seed) -> None:
    check_against_reference(gated_merge, reference.gated_merge, gate_args(b, length, h, d, dtype, device, seed), seed)


ROTARY_CPU = [(1, 1, 2, 1, 16, F32, False), (2, 37, 8, 2, 16, F32, True), (2, 19, 4, 2, 16, BF16, False),
              (1, 33, 6, 2, 8, F16, True), (2, 17, 2, 2, 32, F32, False)]
GATE_CPU = [(1, 1, 2, 16, F32), (2, 37, 8, 16, F32), (2, 19, 4, 16, BF16), (1, 33, 6, 8, F16), (2, 17, 3, 32, F32)]


@pytest.mark.parametrize(("b", "length", "h", "g", "d", "dtype", "strided"), ROTARY_CPU)
def test_rotary_matches_reference(b, length, h, g, d, dtype, strided) -> None:
    check_rotary(b, length, h, g, d, dtype, "cpu", seed=length, strided=strided)


@pytest.mark.parametrize(("b", "length", "h", "g", "d", "dtype", "strided"), ROTARY_CPU)
def test_projection_matches_reference(b, length, h, g, d, dtype, strided) -> None:
    check_project(b, length, h, g, d, dtype, "cpu", seed=length, strided=strided)


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str, min_tiles: int | None) -> list[int]:
    """Counts the calls of module.name, module's weight-gradient kernel asked to run from min_tiles
    token tiles per program (0: always; None: as the module sets it)."""
    calls: list[int] = []
    wrapped = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return wrapped(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    if min_tiles is not None:
        monkeypatch.setattr(module, "_WGRAD_MIN_TILES", min_tiles)
    return calls


def _count_fused_backwards(monkeypatch: pytest.MonkeyPatch, min_tiles: int | None = None) -> list[int]:
    """Counts the calls of the projection backward that also sums the weights' gradients (_project_bwd)."""
    return _count_calls(monkeypatch, rotary_triton, "_merge_with_weight_grads", min_tiles)


@pytest.mark.parametrize(("b", "length", "h", "g", "d", "dtype", "strided"), ROTARY_CPU)
def test_projection_backward_kernel_matches_reference(b, length, h, g, d, dtype, strided, monkeypatch) -> None:
    """The backward kernel that writes dy and sums dy^T x and the bias's gradient in parts, forced
    at these shapes (it runs from _WGRAD_MIN_TILES token tiles per SM)."""
    calls = _count_fused_backwards(monkeypatch, min_tiles=0)
    check_project(b, length, h, g, d, dtype, "cpu", seed=length, strided=strided)
    assert len(calls) == 1  # the references are PyTorch's Linears and split


def test_projection_backward_kernel_runs_from_its_tiles_per_sm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused backward runs where the SMs' programs (one under the interpreter) walk
    _WGRAD_MIN_TILES token tiles or more each, _merge and the GEMMs below that."""
    calls = _count_fused_backwards(monkeypatch, min_tiles=3)
    tile = rotary_triton._WGRAD_ROWS
    for tokens, runs in ((3 * tile, True), (2 * tile + 1, True), (2 * tile, False)):
        x, w_qkv, w_gate, b_gate = project_args(1, tokens, 2, 1, 16, F32, "cpu", seed=tokens)
        sum(o.float().sum() for o in project_split_rope(x, w_qkv, w_gate, b_gate, 2, 1)).backward()
        assert len(calls) == int(runs)
        calls.clear()


def test_projection_under_autocast_runs_the_linears() -> None:
    """Under autocast the projection is autocast's Linears, whose outputs come in its dtype; the
    kernel (which the interpreter would run here otherwise) keeps x's dtype."""
    args = project_args(1, 5, 2, 1, 16, F32, "cpu", seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = project_split_rope(*args, 2, 1)
    assert [o.dtype for o in outs] == [torch.bfloat16] * 4
    assert [o.dtype for o in project_split_rope(*args, 2, 1)] == [torch.float32] * 4


def test_projection_kernel_writes_kv_head_major() -> None:
    """The kernel (interpreted here) writes k and v as [B, G, L, d] buffers, which the attention
    kernels gather 16 keys at a time from, and q as [B, L, H, d]; the Linears' path (autocast) keeps
    [B, L, G, d]. Values are the reference's in both (test_projection_matches_reference)."""
    args = project_args(2, 5, 4, 2, 16, F32, "cpu", seed=0)
    q, k, v, _ = project_split_rope(*args, 4, 2)
    assert q.transpose(1, 2).is_contiguous() and k.is_contiguous() and v.is_contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, k, v, _ = project_split_rope(*args, 4, 2)
    assert k.transpose(1, 2).is_contiguous() and v.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize(("hidden", "kernel"), [(256, True), (264, False)])
def test_projection_kernel_takes_x_up_to_256_wide(hidden: int, kernel: bool) -> None:
    """The kernel holds a whole [64, D] tile of x and its [D, 64] weight block, so it takes D <= 256
    (k and v head-major); wider x runs the Linears ([B, L, G, d]). The reference's values either way."""
    gen = torch.Generator().manual_seed(hidden)
    x = torch.randn(2, 70, hidden, generator=gen)
    w_qkv, w_gate = (torch.randn(n, hidden, generator=gen) / hidden**0.5 for n in (8 * 16, 8))
    b_gate = torch.randn(8, generator=gen)
    got = project_split_rope(x, w_qkv, w_gate, b_gate, 4, 2)
    assert got[1].is_contiguous() == kernel and got[1].transpose(1, 2).is_contiguous() != kernel
    for g, r in zip(got, reference.project_split_rope(x, w_qkv, w_gate, b_gate, 4, 2), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)  # fp32, exact products: summation order only


def test_projection_gradient_of_unused_logits_is_zero() -> None:
    """Logits no loss reads: the gate's weight and bias get zero gradients, the qkv weight its own."""
    args = project_args(1, 5, 2, 1, 16, F32, "cpu", seed=0)
    q, _, _, logits = project_split_rope(*args, 2, 1)
    grads = torch.autograd.grad(q.sum(), args[1:])
    assert grads[0].abs().max() > 0 and grads[1].abs().max() == 0 and grads[2].abs().max() == 0


@pytest.mark.parametrize(("b", "length", "h", "d", "dtype"), GATE_CPU)
def test_gate_matches_reference(b, length, h, d, dtype) -> None:
    check_gate(b, length, h, d, dtype, "cpu", seed=length)


def _fallbacks(monkeypatch: pytest.MonkeyPatch, min_tiles: int) -> list[int]:
    """Counts mixed_weight_grad's fallbacks to the gate kernel and cuBLAS (gate_triton.weight_grad)."""
    return _count_calls(monkeypatch, gate_triton, "weight_grad", min_tiles)


def check_mix_weight_grad(b, length, h, d, dtype, device, seed) -> None:
    """mixed_weight_grad against autograd of reference.gated_merge for the weight, same dtype and fp64."""
    ltis, stis, logits, weight = gate_args(b, length, h, d, dtype, device, seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    dout = torch.randn(b, length, weight.shape[0], generator=gen, device=device).to(dtype)
    got = mixed_weight_grad(dout, ltis.detach(), stis.detach(), logits.detach().reshape(b * length, 2 * h), weight)

    def ref(*args: Tensor) -> Tensor:
        lt, st, gl, w = (a.detach().requires_grad_() for a in args)
        return torch.autograd.grad(reference.gated_merge(lt, st, gl, w), w, dout.to(w.dtype))[0]

    same = ref(ltis, stis, logits, weight)
    assert_close_to_reference("weight grad", got, same, ref(*(t.double() for t in (ltis, stis, logits, weight))))


@pytest.mark.parametrize(("b", "length", "h", "d", "dtype"), [*GATE_CPU, (2, 21, 3, 12, F32)])  # d = 12: padded
def test_mix_weight_grad_kernel_matches_reference(b, length, h, d, dtype, monkeypatch) -> None:
    """The output projection's weight gradient with the mix formed inside the kernel that sums it
    (gate_triton._mix_wgrad), forced at these shapes (it runs from _WGRAD_MIN_TILES token tiles per
    program)."""
    fallbacks = _fallbacks(monkeypatch, 0)
    check_mix_weight_grad(b, length, h, d, dtype, "cpu", seed=length)
    assert not fallbacks


def test_mix_weight_grad_kernel_runs_from_its_tiles_per_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for 3 tiles per program, the kernel runs from 3 x the programs' tiles of tokens on (the
    last tile may be partial); one tile fewer, the gate kernel and cuBLAS run."""
    fallbacks = _fallbacks(monkeypatch, 3)
    need = 3 * gate_triton._WGRAD_PER_SM * gate_triton._WGRAD_ROWS  # tokens; one SM under the interpreter
    tile = gate_triton._WGRAD_ROWS
    for tokens, runs in ((need, True), (need - tile + 1, True), (need - tile, False)):
        check_mix_weight_grad(1, tokens, 2, 16, F32, "cpu", seed=tokens)
        assert len(fallbacks) == int(not runs)
        fallbacks.clear()


def test_rotary_gradient_of_unused_output_is_zero() -> None:
    """An output no loss reads (autograd passes None) contributes nothing to dqkv."""
    (qkv,) = rotary_args(1, 5, 2, 1, 16, F32, "cpu", seed=0)
    q, k, v = split_heads_rope(qkv, 2, 1)
    (grad,) = torch.autograd.grad(q.sum(), qkv)
    assert grad[..., 32:].abs().max() == 0 and grad[..., :32].abs().max() > 0


def test_register_caps_reach_only_compiled_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cap becomes Triton's maxnreg launch option on a GPU; None, and anything under the
    interpreter (no registers to cap), gives no option."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert reg_cap(72) == {"maxnreg": 72} and reg_cap(None) == {}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert reg_cap(72) == {}


def test_lengths_reach_the_kernels_without_a_cast() -> None:
    """int32 and int64 lengths on the device are the kernels' as they are (no copy: a launch of its
    own on a GPU); other integer types become int32, None stays None."""
    for dtype in (torch.int32, torch.int64):
        lengths = torch.tensor([5, 3], dtype=dtype)
        assert device_lengths(lengths, lengths.device).data_ptr() == lengths.data_ptr()
    narrow = device_lengths(torch.tensor([5, 3], dtype=torch.int16), torch.device("cpu"))
    assert narrow.dtype == torch.int32 and narrow.tolist() == [5, 3]
    assert device_lengths(None, torch.device("cpu")) is None


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="even d"):
        split_heads_rope(torch.zeros(1, 4, 4 * 15), 2, 1)
    with pytest.raises(ValueError, match="is not"):
        split_heads_rope(torch.zeros(4, 4 * 16), 2, 1)
    with pytest.raises(ValueError, match="gate bias"):
        project_split_rope(torch.zeros(1, 4, 40), torch.zeros(64, 40), torch.zeros(4, 40), torch.zeros(3), 2, 1)
    with pytest.raises(ValueError, match="even d"):
        project_split_rope(torch.zeros(1, 4, 40), torch.zeros(60, 40), torch.zeros(4, 40), torch.zeros(4), 2, 1)
    with pytest.raises(ValueError, match="gate logits"):
        gated_merge(torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16), torch.zeros(1, 4, 2), torch.zeros(32, 32))
    with pytest.raises(ValueError, match="projection weight"):
        gated_merge(torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16), torch.zeros(1, 4, 4), torch.zeros(32, 16))


def test_merge_saves_no_activation_of_its_own() -> None:
    """The backward recomputes the mix: everything saved is an input's storage (no extra [B, L, H, d])."""
    args = gate_args(2, 9, 4, 16, F32, "cpu", seed=0)
    out = gated_merge(*args)
    saved = {t.untyped_storage().data_ptr() for t in out.grad_fn.saved_tensors}
    assert saved <= {a.untyped_storage().data_ptr() for a in args} and len(saved) == 4


def check_rows_over_dq(b: int, length: int, h: int, g: int, d: int, dtype: torch.dtype, device: str) -> None:
    """The rotary backward kernel writing dy over the fp32 dq it reads (the fused layer's backward)
    gives the rows it writes into a new buffer, bit for bit; where the rows do not fit (h = g: 3 h d
    + gate columns > 2 h d), a new buffer."""
    gen = torch.Generator(device=device).manual_seed(length)
    dq = empty_blhd(torch.empty(b, h, length, d, device=device), h, torch.float32)
    dq.copy_(torch.randn(dq.shape, generator=gen, device=device))
    dk, dv = (torch.randn(b, g, length, d, generator=gen, device=device).to(dtype) for _ in range(2))
    dgl = torch.randn(b * length, 2 * h, generator=gen, device=device).to(dtype)
    args = (dgl, b, length, h, g, d, 2 * h, dtype)
    fresh = rotary_triton._merge((dq, dk, dv), *args)
    over = rotary_triton._merge((dq, dk, dv), *args, reuse_dq=True)
    fits = (h + 2 * g) * d + 2 * h <= 2 * h * d
    assert (over.untyped_storage().data_ptr() == dq.untyped_storage().data_ptr()) == fits
    assert torch.equal(over, fresh)


@pytest.mark.parametrize(("b", "length", "h", "g"), [(2, 37, 4, 2), (1, 5, 4, 1), (2, 9, 2, 2)])
def test_rotary_backward_writes_dy_over_fp32_dq(b: int, length: int, h: int, g: int) -> None:
    check_rows_over_dq(b, length, h, g, 16, BF16, "cpu")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("b", "length", "h", "g", "d", "dtype"),
                         [(64, 512, 8, 2, 16, BF16), (3, 4097, 8, 2, 32, F16), (8, 1000, 4, 1, 64, BF16), (2, 300, 4, 4, 16, BF16)])
def test_gpu_rotary_backward_writes_dy_over_fp32_dq(b: int, length: int, h: int, g: int, d: int, dtype) -> None:
    """Many programs and warps at once: a program that wrote before all of its threads had read
    their dq would show here."""
    check_rows_over_dq(b, length, h, g, d, dtype, "cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(12))
def test_gpu_projection_backward_kernel(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused projection backward (fp16/bf16) forced at random shapes, and unforced at the
    bench's B = 64, L = 2048, where it runs on its own."""
    rng = random.Random(1000 + index)
    if index == 0:
        b, length, h, g, d, dtype, forced = 64, 2048, 8, 2, 16, BF16, False
    else:
        b, length, h, g = rng.randint(1, 4), rng.randint(1, 3000), *rng.choice([(8, 2), (4, 1), (2, 2), (6, 2)])
        widths = [d for d in (16, 32, 64) if h * d + 8 <= rotary_triton._PROJECT_MAX_HIDDEN]  # x the kernel takes
        d = rng.choice(widths)
        dtype, forced = (BF16, F16)[index % 2], True
    calls = _count_fused_backwards(monkeypatch, min_tiles=0 if forced else None)
    check_project(b, length, h, g, d, dtype, "cuda", seed=index, strided=index % 2 == 0)
    assert len(calls) == 1


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(12))
def test_gpu_mix_weight_grad_kernel(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output projection's weight gradient from the branches (fp16/bf16), forced at random shapes."""
    rng = random.Random(2000 + index)
    fallbacks = _fallbacks(monkeypatch, 0)
    b, length, h = rng.randint(1, 4), rng.randint(1, 3000), rng.choice([2, 4, 6, 8])
    d = rng.choice([d for d in (16, 32, 64) if h * d + 8 <= gate_triton._MAX_OUT])  # gate_args: D = H d + 8
    check_mix_weight_grad(b, length, h, d, (BF16, F16)[index % 2], "cuda", seed=index)
    assert not fallbacks


def _gpu_shape(index: int) -> tuple:
    """(B, L, H, G, d, dtype) for case index: edge lengths first, then random."""
    rng = random.Random(index)
    edge = [1, 15, 16, 17, 200, 1000, 4097]
    length = edge[index] if index < len(edge) else rng.randint(2, 3000)
    h, g = rng.choice([(8, 2), (4, 1), (2, 2), (6, 2), (8, 8)])
    return rng.randint(1, 4), length, h, g, rng.choice([16, 32, 64]), (BF16, F16, F32)[index % 3]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(50))
def test_gpu_random_shapes(index: int) -> None:
    b, length, h, g, d, dtype = _gpu_shape(index)
    check_rotary(b, length, h, g, d, dtype, "cuda", seed=index, strided=index % 2 == 1)
    check_project(b, length, h, g, d, dtype, "cuda", seed=index, strided=index % 2 == 0)
    check_gate(b, length, h, d, dtype, "cuda", seed=index)
