"""Run records (DESIGN section 7): one JSON per training run, the single source for reports.

Path: results/runs/<dataset>/<model>/L<max_len>/seed<seed>.json. Fields:
dataset, model, variant, max_len, seed, status ("ok" | "oom" | "error"), error,
metrics / valid_metrics (lower-case keys like "ndcg@10"), eval_mode, memory, time, env, config.
Memory fields hold numbers (MiB) or the string "n/a (no NVIDIA GPU)"; never fake zeros.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blossom.io import atomic_write_json

STATUSES = ("ok", "oom", "error")
REQUIRED = ("dataset", "model", "max_len", "seed", "status", "metrics", "memory", "time", "env")


def run_path(root: str | Path, dataset: str, model: str, max_len: int, seed: int) -> Path:
    """Where the record of one run lives under `root` (normally results/runs)."""
    return Path(root) / dataset / model / f"L{max_len}" / f"seed{seed}.json"


def validate_record(record: dict[str, Any]) -> dict[str, Any]:
    """Raise ValueError naming the first missing or malformed field."""
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise ValueError(f"run record lacks {', '.join(missing)}")
    if record["status"] not in STATUSES:
        raise ValueError(f"run record status {record['status']!r} not in {STATUSES}")
    return record


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Validate and write atomically (temp file + rename)."""
    return atomic_write_json(path, validate_record(record))


def read_record(path: str | Path) -> dict[str, Any]:
    """Load and validate one record."""
    with open(path, encoding="utf-8") as handle:
        return validate_record(json.load(handle))


def read_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Load many records (the report rules pass their inputs)."""
    return [read_record(p) for p in paths]
