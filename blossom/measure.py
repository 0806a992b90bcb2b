"""One context manager for what every run reports: wall clock, torch peaks, NVML peak, RSS peak.

NVML sees memory the torch allocator does not (CUDA context, cuBLAS workspaces, fragmentation),
so it is sampled in a background thread. Without an NVIDIA GPU the GPU fields say so in words,
never as zeros; the process RSS peak is always recorded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import torch

from blossom.errors import BlossomError

MIB = 1024 * 1024
NO_GPU = "n/a (no NVIDIA GPU)"


def load_nvml() -> ModuleType | None:
    """The pynvml module (from nvidia-ml-py) if NVML can be initialised here, else None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    return pynvml


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda when present; asking for cuda without it is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BlossomError("--device cuda, but torch sees no CUDA device")
    return torch.device(name)


def _nvml_handle(nvml: ModuleType, device: torch.device) -> Any:
    """NVML handle of the GPU torch calls `device` (NVML ignores CUDA_VISIBLE_DEVICES: match by UUID)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except nvml.NVMLError:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


class Measure:
    """`with Measure(device) as m: ...` then `m.result()` -> dict of seconds and MiB.

    nvml_peak_mib is the device's used memory at its sampled peak (all processes on that GPU);
    nvml_baseline_mib is what was used when the block began, so peak - baseline is this block.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.005, nvml: ModuleType | None = None):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self._nvml = nvml
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        self._nvml_peak = self._nvml_baseline = 0
        self._torch_peaks = (0, 0)  # (allocated, reserved) bytes, read when the block ends
        self._rss_peak = 0
        self._start = self.wall_s = 0.0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def __enter__(self) -> "Measure":
        self._process = psutil.Process()
        self._rss_peak = self._process.memory_info().rss
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            nvml = self._nvml if self._nvml is not None else load_nvml()
            if nvml is not None:
                self._nvml = nvml
                self._handle = _nvml_handle(nvml, self.device)
                self._nvml_baseline = self._nvml_peak = nvml.nvmlDeviceGetMemoryInfo(self._handle).used
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def _sample_once(self) -> None:
        self._rss_peak = max(self._rss_peak, self._process.memory_info().rss)
        if self._handle is not None:
            self._nvml_peak = max(self._nvml_peak, self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sample_once()
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
            # frozen now: a later Measure resets torch's peak counters, and result() may come after it
            self._torch_peaks = (torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device))
        self.wall_s = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def result(self) -> dict[str, float | str]:
        """Seconds and MiB; GPU fields are a sentence, not a number, when there is no NVIDIA GPU."""
        out: dict[str, float | str] = {"wall_s": round(self.wall_s, 4), "rss_peak_mib": round(self._rss_peak / MIB, 1)}
        if self.on_gpu:
            out["torch_peak_allocated_mib"] = round(self._torch_peaks[0] / MIB, 1)
            out["torch_peak_reserved_mib"] = round(self._torch_peaks[1] / MIB, 1)
        else:
            out["torch_peak_allocated_mib"] = out["torch_peak_reserved_mib"] = NO_GPU
        if self._handle is not None:
            out["nvml_peak_mib"] = round(self._nvml_peak / MIB, 1)
            out["nvml_baseline_mib"] = round(self._nvml_baseline / MIB, 1)
        else:
            out["nvml_peak_mib"] = out["nvml_baseline_mib"] = NO_GPU
        return out


def environment() -> dict[str, str]:
    """Device and versions for a record: what a reader needs to compare numbers across machines."""
    import platform
    import subprocess

    import triton

    info = {"device": "cpu", "driver": NO_GPU, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    try:
        import recbole

        info["recbole"] = recbole.__version__
    except ImportError:
        info["recbole"] = "not installed"
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        nvml = load_nvml()
        if nvml is not None:
            info["driver"] = str(nvml.nvmlSystemGetDriverVersion())
    try:
        here = Path(__file__).parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "blossom"],
                                 capture_output=True, text=True, timeout=5, cwd=here.parent)
        # "+dirty": the code that ran differs from the commit (edited or new files in the package)
        info["commit"] = (commit.stdout.strip() or "unknown") + ("+dirty" if changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info
