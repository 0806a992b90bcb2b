"""Give each job its own GPU on a multi-GPU machine, without a cluster scheduler.

Snakemake's `gpu` resource limits how many jobs run at once but does not say which GPU each
one gets. A job claims the first GPU whose lock file it can lock exclusively and pins itself to
it through CUDA_VISIBLE_DEVICES (before CUDA starts). The lock is held until the process exits,
so a crashed job frees its GPU. A GPU already chosen by a scheduler (CUDA_VISIBLE_DEVICES set,
as SLURM does) is respected.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

_held: list[int] = []  # open lock descriptors: closing them would release the GPU


def visible_gpu_count() -> int:
    """Number of NVIDIA GPUs NVML sees (0 without a driver); does not initialise CUDA."""
    from blossom.measure import load_nvml

    nvml = load_nvml()
    return 0 if nvml is None else int(nvml.nvmlDeviceGetCount())


def claim_gpu(count: int | None = None, lock_dir: Path | None = None, poll_s: float = 2.0) -> int | None:
    """Pin this process to a free GPU and return its index; None when there is nothing to choose."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    count = visible_gpu_count() if count is None else count
    if count <= 1:
        return None
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    while True:
        for index in range(count):
            fd = os.open(lock_dir / f"blossom-gpu-{index}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _held.append(fd)
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
            return index
        time.sleep(poll_s)
