"""BlossomAttention with the Triton backend against the torch backend (the reference).

Same weights (state_dict copied), same right-padded input: the layer output, the input gradient
and every parameter gradient must agree within the flash-attention tolerance rule
(tolerance.py), with an fp64 torch-backend layer as the exact answer. The parameters selection
alone reads (compressor, intra-window positions) get no gradient from either backend.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import Tensor, nn

from blossom.attention.module import BlossomAttention

from .tolerance import assert_close_to_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _layers(hidden: int, heads: int, kv_heads: int, dtype: torch.dtype, device: str,
            compressed: bool = False) -> dict[str, BlossomAttention]:
    """Triton, same-dtype torch and fp64 torch layers sharing one random set of weights.

    The gate gets the public model's N(0, 0.02) init instead of weight 0, so its gradient and
    both branches' weights depend on the input.
    """
    torch.manual_seed(0)
    layers = {}
    for name, backend in (("triton", "triton"), ("same", "torch"), ("ref64", "torch")):
        layers[name] = BlossomAttention(hidden, heads, kv_heads, backend=backend, compressed=compressed).to(device)
    nn.init.normal_(layers["triton"].gate.weight, std=0.02)
    for name in ("same", "ref64"):
        layers[name].load_state_dict(layers["triton"].state_dict())
    layers["triton"].to(dtype)
    layers["same"].to(dtype)
    layers["ref64"].double()
    return layers


def _run(layer: BlossomAttention, x: Tensor, dout: Tensor, seq_len: Tensor) -> dict[str, Tensor | None]:
    """Output, input gradient and parameter gradients (None where a parameter gets none)."""
    x = x.detach().to(next(layer.parameters()).dtype).requires_grad_()
    out = layer(x, seq_len)
    out.backward(dout.to(out.dtype))
    grads = {f"grad {name}": p.grad for name, p in layer.named_parameters()}
    return {"out": out.detach(), "grad x": x.grad, **grads}


def check_parity(batch: int, length: int, hidden: int, heads: int, kv_heads: int, lengths: list[int], dtype: torch.dtype,
                 device: str, autocast: torch.dtype | None = None, compressed: bool = False) -> None:
    """autocast: run the triton and same-dtype layers inside torch.autocast of that dtype (the fp64
    reference outside it). compressed: the layer with NSA's compressed branch, which does not take
    the fused layer path (the compressor then gets gradients)."""
    layers = _layers(hidden, heads, kv_heads, dtype, device, compressed)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, length, hidden, generator=gen, device=device)
    dout = torch.randn(batch, length, hidden, generator=gen, device=device)
    seq_len = torch.tensor(lengths, device=device)
    results = {}
    for name, layer in layers.items():
        with torch.autocast(device, dtype=autocast) if autocast and name != "ref64" else nullcontext():
            results[name] = _run(layer, x, dout, seq_len)
    kernel, same, ref64 = results["triton"], results["same"], results["ref64"]
    assert (kernel["grad k_compress.0.weight"] is None) == (kernel["grad k_intrablock_positions"] is None) != compressed
    for name, value in kernel.items():
        assert (value is None) == (same[name] is None) == (ref64[name] is None), name
        if value is not None:
            assert_close_to_reference(name, value, same[name], ref64[name])
    for b, n in enumerate(lengths):
        assert not kernel["out"][b, n:].any(), f"output is not 0 past seq_len {n}"


def test_module_parity_cpu() -> None:
    """d = 8 (padded in-kernel), GQA 2:1, one long and one mostly-padded sequence."""
    check_parity(2, 40, hidden=32, heads=4, kv_heads=2, lengths=[40, 9], dtype=torch.float32, device="cpu")


def test_module_parity_cpu_compressed_branch() -> None:
    """The compressed-branch variant takes projection, attend and the compressed attention apart."""
    check_parity(2, 40, hidden=32, heads=4, kv_heads=2, lengths=[40, 9], dtype=torch.float32, device="cpu",
                 compressed=True)


def test_the_model_layer_is_one_autograd_node() -> None:
    """With the learned gate, the Triton backend runs the layer as one node from x (ops.layer): the
    projection's backward reads the branches' fp32 dq without a cast (branches_triton._ProjectAttend)."""
    layer = BlossomAttention(32, 4, 2, backend="triton")
    x = torch.randn(2, 20, 32, requires_grad=True)
    out = layer(x, torch.tensor([20, 3]))
    assert out.grad_fn.name() == "_ProjectAttendBackward"
    leaves = {id(fn.variable) for fn, _ in out.grad_fn.next_functions if fn is not None}
    wanted = (x, layer.to_qkv.weight, layer.gate.weight, layer.gate.bias, layer.combine_heads.weight)
    assert leaves == {id(t) for t in wanted}


@pytest.mark.gpu
@needs_cuda
def test_training_step_as_cuda_graph_equals_eager() -> None:
    """The backward's side stream (side_stream.py) forks and joins inside a CUDA graph capture: a
    replayed step gives the eager step's output and gradients bit for bit (deterministic mode, so
    that no atomics reorder sums), twice."""
    torch.manual_seed(0)
    layer = BlossomAttention(128, 8, 2, backend="triton").cuda().to(torch.bfloat16)
    nn.init.normal_(layer.gate.weight, std=0.02)
    x = torch.randn(8, 600, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dout, seq_len = torch.randn_like(x), torch.tensor([600, 5, 333, 17, 600, 250, 1, 599], device="cuda")
    params = [x, *(p for p in layer.parameters() if p.requires_grad)]

    def step() -> Tensor:
        out = layer(x, seq_len)
        out.backward(dout)
        return out

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        eager = [step().detach().clone()] + [p.grad.clone() for p in params if p.grad is not None]
        for p in params:
            p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the warm-up capture asks for
            step()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        for _ in range(2):
            graph.replay()
            torch.cuda.synchronize()
            replayed = [out] + [p.grad for p in params if p.grad is not None]
            assert len(replayed) == len(eager)
            for a, b in zip(eager, replayed, strict=True):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.gpu
@needs_cuda
def test_module_parity_gpu() -> None:
    """The real layer (hidden 128, 8 heads, 2 kv heads, d = 16) in bf16, where selection bites."""
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(1, 1001, (8,), generator=gen).tolist()
    lengths[0] = 1000
    check_parity(8, 1000, hidden=128, heads=8, kv_heads=2, lengths=lengths, dtype=torch.bfloat16, device="cuda")


@pytest.mark.gpu
@needs_cuda
def test_module_parity_gpu_autocast() -> None:
    """fp32 weights under fp16 autocast, how RecBole's mixed precision (the -AMP models) trains."""
    check_parity(4, 300, hidden=128, heads=8, kv_heads=2, lengths=[300, 17, 256, 1], dtype=torch.float32,
                 device="cuda", autocast=torch.float16)
