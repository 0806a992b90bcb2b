"""A second CUDA stream for backward work that may overlap the main stream's.

The backward of one layer has small, latency-bound steps beside the big kernels: the gated mix and
the output projection's weight gradient, LTIS's inverted index, the projections' weight and bias
gradients. None of them feeds the next big kernel at once, and alone each leaves most SMs idle, so
they run on a second stream of the highest priority while the main stream goes on (H100, B = 64,
bf16, CUDA graphs: results/bench/README.md, session 20). CUDA graph capture records the fork and
the join as graph edges.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import Tensor

_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One high-priority stream per GPU, made once: its priority lets its short kernels start as
    soon as an SM frees up instead of queueing behind the main stream's thousands of programs."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _STREAMS:
        _, highest = torch.cuda.Stream.priority_range()
        _STREAMS[index] = torch.cuda.Stream(device=index, priority=highest)
    return _STREAMS[index]


class SideStream:
    """`with side:` runs its kernels on the side stream, after the current stream's work so far;
    `side.join(*made)` makes the current stream wait for them and hands it the tensors the block
    made (record_stream: the allocator reuses their memory only after the current stream's uses).
    On a CPU (the interpreter's tests) both do nothing: the work runs in order on the one stream."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._main = torch.cuda.current_stream(device)
            self._side = _side_stream(device)
            self._context = torch.cuda.stream(self._side)

    def __enter__(self) -> SideStream:
        if self._cuda:
            self._side.wait_stream(self._main)
            self._context.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._cuda:
            self._context.__exit__(kind, error, trace)

    def join(self, *made: Tensor) -> None:
        if self._cuda:
            self._main.wait_stream(self._side)
            for tensor in made:
                tensor.record_stream(self._main)
