"""GPU claiming: two jobs on a two-GPU machine get different GPUs; a scheduler's choice stands."""

from __future__ import annotations

import subprocess
import sys

from blossom import gpus

CLAIM = "import os, sys; from blossom.gpus import claim_gpu; print(claim_gpu(count=2, lock_dir=sys.argv[1]), flush=True); input()"


def test_two_processes_claim_different_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        claimed = sorted(int(p.stdout.readline()) for p in procs)
    finally:
        for p in procs:
            p.communicate("\n", timeout=30)
    assert claimed == [0, 1]


def test_released_when_the_process_ends(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    first = subprocess.run([sys.executable, "-c", CLAIM, str(tmp_path)], input="\n", capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", CLAIM, str(tmp_path)], input="\n", capture_output=True, text=True)
    assert first.stdout.strip() == second.stdout.strip() == "0"


def test_scheduler_choice_and_single_gpu_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpus.claim_gpu(count=4, lock_dir=tmp_path) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.claim_gpu(count=1, lock_dir=tmp_path) is None
    assert gpus.visible_gpu_count() >= 0
