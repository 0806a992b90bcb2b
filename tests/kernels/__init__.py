"""Kernel tests: Triton kernels against the reference (interpreted on CPU, compiled on GPU)."""
