"""The Triton backend: the sparse kernels behind the Backend interface of backends.py."""

from blossom.attention.ltis_triton import ltis_attention as ltis
from blossom.attention.ltis_triton import select_blocks as select
from blossom.attention.stis_triton import stis_attention as stis

__all__ = ["ltis", "select", "stis"]
