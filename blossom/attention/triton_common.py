"""Pieces the kernels share: input checks, the output layout, the valid length and the dot."""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E: tl.constexpr = tl.constexpr(math.log2(math.e))  # scores in log2 units: exp2 is cheaper


def interpreted() -> bool:
    """True under TRITON_INTERPRET=1 (CPU tests), whose bf16 tl.dot is wrong (TOOLING.md 3)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def reg_cap(registers: int | None) -> dict[str, int]:
    """Launch options capping a kernel's registers per thread (none for None, or under the
    interpreter): a one-warp program's registers bound how many warps an SM keeps resident."""
    return {"maxnreg": registers} if registers and not interpreted() else {}


@triton.jit
def valid_length(SEQ_LEN, b, length):
    """Rows < this are real items: min(seq_len[b], L) as int32 (seq_len int32 or int64), or L
    without seq_len."""
    n_valid = length
    if SEQ_LEN is not None:
        n_valid = tl.minimum(tl.load(SEQ_LEN + b), length).to(tl.int32)
    return n_valid


@triton.jit
def dot(a, b, MODE: tl.constexpr):
    """a @ b with an fp32 result. MODE: "native" (fp16/bf16 tensor cores), or an fp32
    input_precision for fp32 operands ("tf32x3": ~fp32 accuracy on tensor cores; "ieee": exact
    products, and what the interpreter needs, whose bf16 dot is broken)."""
    if MODE == "native":
        out = tl.dot(a, b)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=MODE)
    return out


def dot_mode(dtype: torch.dtype) -> str:
    """dot's MODE for inputs of this dtype: exact fp32 under TRITON_INTERPRET=1 (its bf16 tl.dot
    is wrong, TOOLING.md 3), 3xTF32 for fp32 inputs on a GPU, the input dtype's tensor cores otherwise."""
    if interpreted():
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "native"


def runs_16bit_kernel(t: Tensor) -> bool:
    """t is fp16/bf16 on a GPU, or the interpreter runs (the CPU tests, in any dtype): where the
    kernels made for 2-byte inputs on tensor cores run instead of PyTorch's ops."""
    return interpreted() or (t.is_cuda and t.dtype in (torch.float16, torch.bfloat16))


def summing_programs(n_tokens: int, rows: int, per_sm: int, min_tiles: int, device: torch.device) -> int:
    """Programs of a kernel that sums a weight's gradient over token tiles of rows tokens, in fp32
    parts, one per program (rotary_triton._project_bwd, gate_triton._mix_wgrad): per_sm per SM where
    each would walk min_tiles tiles or more, else 0. Below that a program walks a few tiles one
    after another where cuBLAS spreads its GEMM over the GPU, and the caller's unfused path runs."""
    programs = per_sm * sm_count(device)
    return programs if triton.cdiv(n_tokens, rows) >= min_tiles * programs else 0


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two >= 16 (tl.dot's minimum); kernels mask the extra columns."""
    return max(16, triton.next_power_of_2(head_dim))


def sm_count(device: torch.device) -> int:
    """The GPU's multiprocessors, which launches size their grids by; 1 under the interpreter (a few
    programs, each walking several tiles, as on a GPU)."""
    return 1 if interpreted() else torch.cuda.get_device_properties(device).multi_processor_count


def empty_blhd(like: Tensor, heads: int, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised [B, heads, L, d] tensor (like's dtype unless given) stored as [B, L, heads,
    d]: merging heads after the attention (reference.merge_heads) is then free, and it matches
    the qkv projection."""
    b, _, length, d = like.shape
    return like.new_empty(b, length, heads, d, dtype=dtype).transpose(1, 2)


def branch_buffers(q: Tensor) -> tuple[Tensor, Tensor]:
    """A branch's output (empty_blhd: laid out [B, L, H, d]) and fp32 logsumexp [B, H, L], both
    uninitialised (the kernels write the rows < seq_len of the logsumexp)."""
    b, h, length, _ = q.shape
    return empty_blhd(q, h), torch.empty(b, h, length, device=q.device, dtype=torch.float32)


def check_gqa(q: Tensor, k: Tensor, v: Tensor, seq_len: Tensor | None, max_head_dim: int) -> None:
    """Reject shapes and dtypes the kernels do not handle, with a message that says why."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        shapes = ", ".join(str(tuple(x.shape)) for x in (q, k, v))
        raise ValueError(f"need q [B, H, L, d] and k, v [B, G, L, d]; got {shapes}")
    (b, h, length, d), g = q.shape, k.shape[1]
    if k.shape[0] != b or k.shape[2] != length or k.shape[3] != d or h % g:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} do not form a GQA layout")
    if length < 1 or d > max_head_dim:
        raise ValueError(f"need L >= 1 and head dim <= {max_head_dim}; got L={length}, d={d}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if seq_len is not None and seq_len.shape != (b,):
        raise ValueError(f"seq_len must have shape ({b},), got {tuple(seq_len.shape)}")


def device_lengths(seq_len: Tensor | None, device: torch.device) -> Tensor | None:
    """seq_len as the kernels read it: contiguous int32 or int64 on the inputs' device. Lengths
    already there in either are passed as they are: a cast is a kernel launch of its own (~1.5 us
    in each step on an H100, where RecBole and the bench hand over int64)."""
    if seq_len is None:
        return None
    dtype = seq_len.dtype if seq_len.dtype in (torch.int32, torch.int64) else torch.int32
    return seq_len.to(device=device, dtype=dtype).contiguous()
