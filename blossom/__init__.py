"""blossom: reproducibility benchmark suite for BlossomRec (arXiv 2512.13368)."""

__version__ = "0.1.0"
