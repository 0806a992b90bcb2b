"""Shared scaffolding of the kernel tests: inputs, the reference comparison, the GPU case list."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from .tolerance import assert_close_to_reference

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
Shape = tuple[int, int, int, int, int]  # B, H, G, L, d
Branch = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]  # (q, k, v, seq_len) -> out
GRADS = ("out", "dq", "dk", "dv")


def inputs(shape: Shape, dtype: torch.dtype, layout: str, device: str, seed: int) -> list[Tensor]:
    """q [B, H, L, d], k, v [B, G, L, d] needing grad; layout "qkv" makes them strided views of
    one [B, L, H + 2G, d] projection as the model does, "contiguous" separate tensors."""
    b, h, g, length, d = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    if layout == "qkv":
        qkv = torch.randn(b, length, h + 2 * g, d, generator=gen, device=device).to(dtype).requires_grad_()
        return [x.transpose(1, 2) for x in qkv.split([h, g, g], dim=2)]
    return [
        torch.randn(b, heads, length, d, generator=gen, device=device).to(dtype).requires_grad_()
        for heads in (h, g, g)
    ]


def run_branch(fn: Branch, qkv: list[Tensor], dout: Tensor, seq_len: Tensor | None) -> list[Tensor]:
    """[out, dq, dk, dv] of fn for the upstream gradient dout."""
    out = fn(*qkv, seq_len)
    return [out.detach(), *torch.autograd.grad(out, qkv, dout.to(out.dtype))]


def check_branch(kernel: Branch, reference: Branch, qkv: list[Tensor], lengths: list[int] | None, seed: int) -> None:
    """Kernel vs the fp64 and same-dtype references (output and gradients), plus exact zeros
    at padded positions."""
    b, h, length, d = qkv[0].shape
    device = qkv[0].device
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    dout = torch.randn(b, h, length, d, generator=gen, device=device)  # nonzero at padding too
    seq_len = None if lengths is None else torch.tensor(lengths, device=device)
    got = run_branch(kernel, qkv, dout, seq_len)
    same = run_branch(reference, qkv, dout, seq_len)
    ref64 = run_branch(reference, [x.detach().double().requires_grad_() for x in qkv], dout, seq_len)
    for name, actual, ref_same, ref in zip(GRADS, got, same, ref64):
        assert_close_to_reference(name, actual, ref_same, ref)
    for name, value in zip(GRADS, got if lengths is not None else []):
        for batch, n in enumerate(lengths):
            assert not value[batch, :, n:].any(), f"{name} is not 0 past seq_len {n} (batch {batch})"


def gpu_case(index: int, seed: int) -> tuple:
    """Case `index` of a GPU set: the issue's edge lengths first, then random shapes."""
    rng = random.Random(seed + index)
    edge = [1, 15, 16, 17, 200, 1000, 4097]
    length = edge[index] if index < len(edge) else rng.choice(edge + [rng.randint(2, 1500) for _ in range(4)])
    b = 1 if length > 1000 else rng.choice([1, 2, 3, 4])
    h, g = rng.choice([(8, 2), (8, 2), (4, 1), (2, 2), (6, 2), (8, 8)])
    d = rng.choice([16, 16, 32, 64])
    dtype = (BF16, F16, F32)[index % 3]
    padding = rng.choice(["none", "random", "mostly"])
    lengths = {
        "none": None,
        "random": [rng.randint(1, length) for _ in range(b)],
        "mostly": [rng.randint(1, max(1, length // 10)) for _ in range(b)],
    }[padding]
    return (b, h, g, length, d), dtype, rng.choice(["qkv", "contiguous"]), lengths


def check_padding_never_read(kernel: Branch, shape: Shape, lengths: list[int], device: str) -> None:
    """NaN in the padded part of k and v changes nothing: not valid outputs, not any gradient."""
    clean = inputs(shape, F32, "contiguous", device, seed=3)
    poisoned = [x.detach().clone() for x in clean]
    for x in poisoned[1:]:
        for batch, n in enumerate(lengths):
            x[batch, :, n:] = float("nan")
    poisoned = [x.requires_grad_() for x in poisoned]
    b, h, length, d = clean[0].shape
    dout = torch.randn(b, h, length, d, device=device)
    seq_len = torch.tensor(lengths, device=device)
    for want, got in zip(run_branch(kernel, clean, dout, seq_len), run_branch(kernel, poisoned, dout, seq_len)):
        assert torch.equal(want, got)
