"""The primitives BlossomRec attention needs, behind one interface per backend.

`torch` is the reference (reference.py). `triton` is the sparse kernels (triton_ops.py), used
by default when CUDA is present. Every backend implements the same signatures:

- stis(q, k, v, scale, seq_len) -> [B, H, L, d]            (differentiable)
- compress(k, positions, mlp) -> ck [B, G, L // 16, d]       (the selection's compressed keys)
- select(q, ck, scale, num_selected) -> [B, G, L, n] int   (no gradient; -1 = unused slot)
- ltis(q, k, v, block_idx, scale, seq_len) -> [B, H, L, d] (differentiable in q, k, v)
- branches(q, k, v, block_idx, scale, seq_len) -> (ltis, stis), both branches in one call
- split_heads(qkv, n_heads, kv_heads) -> q, k, v            (RoPE on q and k; differentiable)
- project(x, w_qkv, w_gate, b_gate, n_heads, kv_heads) -> q, k, v, gate_logits
                                                          (split_heads of x's qkv projection and its gate projection)
- merge(ltis, stis, gate_logits, weight) -> [B, L, D]     (gated sum, heads merged, projected)
- attend(q, k, v, block_idx, scale, seq_len, gate_logits, weight) -> [B, L, D]
                                                          (merge(*branches(...), ...); may fuse more)
- layer(x, w_qkv, w_gate, b_gate, n_heads, kv_heads, choose, scale, seq_len, weight) -> [B, L, D]
                                                          (attend of project's outputs, block_idx = choose(q, k)
                                                          without gradient; may fuse all of it)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from collections.abc import Callable

import torch

from blossom.attention import reference

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class Backend:
    """A named set of the primitives."""

    name: str
    stis: Callable
    compress: Callable
    select: Callable
    ltis: Callable
    branches: Callable
    split_heads: Callable
    project: Callable
    merge: Callable
    attend: Callable
    layer: Callable


def _torch_select(q, ck, scale, num_selected):
    with torch.no_grad():
        return reference.select_blocks(reference.block_importance(q, ck, scale), num_selected)


def _torch_branches(q, k, v, block_idx, scale, seq_len):
    """The two reference branches one after the other (nothing to share in the spec)."""
    return reference.ltis_attention(q, k, v, block_idx, scale, seq_len), reference.stis_attention(q, k, v, scale, seq_len)


def _torch_attend(q, k, v, block_idx, scale, seq_len, gate_logits, weight):
    """Both reference branches, then the reference gated merge."""
    return reference.gated_merge(*_torch_branches(q, k, v, block_idx, scale, seq_len), gate_logits, weight)


def _torch_layer(x, w_qkv, w_gate, b_gate, n_heads, kv_heads, choose, scale, seq_len, weight):
    """The reference projection, the blocks chosen without gradient, then _torch_attend."""
    q, k, v, gate_logits = reference.project_split_rope(x, w_qkv, w_gate, b_gate, n_heads, kv_heads)
    with torch.no_grad():
        block_idx = choose(q, k)
    return _torch_attend(q, k, v, block_idx, scale, seq_len, gate_logits, weight)


TORCH = Backend("torch", reference.stis_attention, reference.compress_keys, _torch_select, reference.ltis_attention,
                _torch_branches, reference.split_heads_rope, reference.project_split_rope, reference.gated_merge,
                _torch_attend, _torch_layer)


def triton_available() -> bool:
    """True when a CUDA device and the Triton kernels can be used."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def get_backend(name: str) -> Backend:
    """Resolve a backend name; `auto` means triton on CUDA, torch otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention_backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if triton_available() else "torch"
    if name == "torch":
        return TORCH
    from blossom.attention import triton_ops

    return Backend("triton", triton_ops.stis, triton_ops.compress, triton_ops.select, triton_ops.ltis,
                   triton_ops.branches, triton_ops.split_heads, triton_ops.project, triton_ops.merge, triton_ops.attend,
                   triton_ops.layer)
