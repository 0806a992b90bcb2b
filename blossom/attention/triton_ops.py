"""The Triton backend: the sparse kernels and the fused glue behind the Backend interface of backends.py."""

from blossom.attention.branches_triton import attend
from blossom.attention.branches_triton import both_branches as branches
from blossom.attention.branches_triton import project_attend as layer
from blossom.attention.compress_triton import compress_keys as compress
from blossom.attention.gate_triton import gated_merge as merge
from blossom.attention.ltis_triton import ltis_attention as ltis
from blossom.attention.ltis_triton import select_blocks as select
from blossom.attention.rotary_triton import project_split_rope as project
from blossom.attention.rotary_triton import split_heads_rope as split_heads
from blossom.attention.stis_triton import stis_attention as stis

__all__ = ["attend", "branches", "compress", "layer", "ltis", "merge", "project", "select", "split_heads", "stis"]
