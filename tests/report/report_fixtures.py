"""Fixture run records for the report tests: two seeds, an OOM run, a CPU run, ablation variants.

(A plain module, not conftest.py, so test files can import the builders; conftest.py wraps them
as fixtures.)

ml-1m L=50 (uni100, GPU): SASRec seeds 2020/2021, BlossomRec, GRU4Rec, two ablation variants.
ml-1m L=200: SASRec OOM, BlossomRec ok. ml-100k L=50 on CPU: memory only as RSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blossom.records import run_path, write_record

GPU = "NVIDIA H100 80GB HBM3"
CPU = "cpu"
NA = "n/a (no NVIDIA GPU)"


def make_record(dataset: str, model: str, max_len: int, seed: int = 2020, *, metrics: tuple | None = None,
                nvml: float | str = NA, rss: float = 3000.0, train: float = 10.0, infer: float = 2.0,
                variant: str = "official", device: str = GPU, status: str = "ok",
                **extra: Any) -> dict[str, Any]:
    """A schema-valid record; `metrics` = (recall, mrr, ndcg) at 10, empty unless status is ok."""
    recall, mrr, ndcg = metrics or (0.5, 0.2, 0.3)
    return {
        "dataset": dataset, "model": model, "variant": variant, "max_len": max_len, "seed": seed,
        "status": status, "error": None if status == "ok" else "CUDA out of memory",
        "metrics": {"recall@10": recall, "mrr@10": mrr, "ndcg@10": ndcg} if status == "ok" else {},
        "valid_metrics": {}, "eval_mode": "uni100",
        "memory": {"nvml_peak_mib": nvml, "torch_peak_allocated_mib": NA if nvml == NA else nvml * 0.8,
                   "torch_peak_reserved_mib": NA if nvml == NA else nvml * 0.9, "rss_peak_mib": rss},
        "memory_infer": {"nvml_peak_mib": NA if nvml == NA else nvml / 4, "rss_peak_mib": rss / 2},
        "time": {"train_s_per_epoch": train, "epochs": 3, "infer_s": infer, "total_s": 3 * train + infer},
        "env": {"device": device, "torch": "2.11.0", "recbole": "1.2.1", "python": "3.12.3", "commit": "abc123"},
        "config": {}, **extra,
    }


def fixture_records() -> list[dict[str, Any]]:
    return [
        make_record("ml-1m", "SASRec", 50, 2020, metrics=(0.50, 0.20, 0.27), nvml=1000, train=10, infer=2),
        make_record("ml-1m", "SASRec", 50, 2021, metrics=(0.52, 0.22, 0.29), nvml=1200, train=12, infer=2),
        make_record("ml-1m", "BlossomRec", 50, metrics=(0.55, 0.19, 0.285), nvml=500, train=5.5, infer=4,
                    eval_time={"fast_s": 0.5, "recbole_s": 4.0}),
        make_record("ml-1m", "GRU4Rec", 50, metrics=(0.45, 0.18, 0.25), nvml=400, train=3, infer=1),
        make_record("ml-1m", "BlossomRec-noLTIS", 50, metrics=(0.53, 0.18, 0.27), nvml=450),
        make_record("ml-1m", "BlossomRec", 50, variant="noSTIS", metrics=(0.54, 0.185, 0.28), nvml=480),
        make_record("ml-1m", "SASRec", 200, status="oom"),
        make_record("ml-1m", "BlossomRec", 200, metrics=(0.60, 0.30, 0.40), nvml=4000, train=40, infer=10),
        make_record("ml-100k", "SASRec", 50, metrics=(0.49, 0.20, 0.26), rss=2048, train=170, infer=20,
                    device=CPU),
        make_record("ml-100k", "BlossomRec", 50, metrics=(0.48, 0.19, 0.25), rss=1024, train=85, infer=40,
                    device=CPU),
    ]


def write_runs(root: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Write records where the suite keeps them; returns their paths."""
    return [write_record(run_path(root, r["dataset"], r["model"] + ("" if r["variant"] == "official" else
                                                                    f"-{r['variant']}"),
                                  r["max_len"], r["seed"]), r)
            for r in records]
