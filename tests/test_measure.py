"""Measurement: CPU fallback says 'no NVIDIA GPU' in words; the NVML path is driven by a fake NVML."""

from __future__ import annotations

import re
import threading
import time
import types

import pytest
import torch

from blossom import measure
from blossom.measure import MIB, NO_GPU, Measure


def test_cpu_run_records_rss_and_no_gpu():
    with Measure("cpu") as m:
        block = torch.ones(64 * MIB // 4)  # 64 MiB the RSS sampler must see
        time.sleep(0.05)
        del block
    result = m.result()
    assert result["wall_s"] >= 0.05
    assert result["rss_peak_mib"] > 64
    for key in ("nvml_peak_mib", "nvml_baseline_mib", "torch_peak_allocated_mib", "torch_peak_reserved_mib"):
        assert result[key] == NO_GPU


def test_load_nvml_without_driver_returns_none():
    """This machine has no NVIDIA driver: nvmlInit raises NVMLError_LibraryNotFound."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert measure.load_nvml() is None


class FakeNVML:
    """Stands in for pynvml: memory 'used' rises to a peak while the block runs, then falls."""

    class NVMLError(Exception):
        pass

    def __init__(self, readings_mib: list[int]):
        self.readings = [r * MIB for r in readings_mib]
        self.calls = 0
        self.lock = threading.Lock()

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise self.NVMLError("no uuid")

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        with self.lock:
            value = self.readings[min(self.calls, len(self.readings) - 1)]
            self.calls += 1
        return types.SimpleNamespace(used=value, total=80_000 * MIB)


def test_nvml_peak_from_background_sampling(monkeypatch):
    fake = FakeNVML([1000, 1200, 5000, 3000, 1100])
    # pretend to be on a GPU: torch's CUDA calls become no-ops returning fixed peaks
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2048 * MIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 3072 * MIB)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    with Measure("cuda:0", interval_s=0.001, nvml=fake) as m:
        while fake.calls < len(fake.readings) + 2:
            time.sleep(0.001)
    result = m.result()
    assert result["nvml_baseline_mib"] == 1000
    assert result["nvml_peak_mib"] == 5000
    assert result["torch_peak_allocated_mib"] == 2048
    assert result["torch_peak_reserved_mib"] == 3072


def test_torch_peaks_are_those_of_the_block(monkeypatch):
    """A block's torch peaks are fixed when it ends: a later block resets torch's counters (as the
    test evaluation after training does), and reading the first result afterwards must not see them."""
    peaks = {"allocated": 9000 * MIB}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: peaks.update(allocated=0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peaks["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 10_000 * MIB)
    fake = FakeNVML([500])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    with Measure("cuda:0", nvml=fake) as train:
        peaks["allocated"] = 9000 * MIB
    with Measure("cuda:0", nvml=fake) as infer:
        peaks["allocated"] = 160 * MIB
    assert train.result()["torch_peak_allocated_mib"] == 9000
    assert infer.result()["torch_peak_allocated_mib"] == 160


def test_environment_names_versions():
    env = measure.environment()
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?|unknown", env["commit"]), env["commit"]
    assert env["torch"] == torch.__version__
    assert env["recbole"] == "1.2.1"
    assert env["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name())
