"""Run records -> flat pandas frames: the one place the report layer reads record fields.

Every table, plot and comparison works on `runs_frame` (one row per record) or on `aggregate`
(one row per configuration, seeds pooled), so a record field is interpreted in one place only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from blossom.errors import BlossomError
from blossom.records import STATUSES, read_record

# Variant names that mean "the model as published": no suffix in the model label.
DEFAULT_VARIANTS = (None, "", "default", "official")
# Memory fields in order of preference; the first numeric one is reported, with its source.
MEMORY_SOURCES = {
    "nvml_peak_mib": "NVML",
    "torch_peak_reserved_mib": "torch reserved",
    "torch_peak_allocated_mib": "torch allocated",
    "rss_peak_mib": "RSS",
}
# Training-phase peak (fit: training + validation) and test-evaluation peak, from record["memory"]
# and record["memory_infer"] (older records without the latter give NaN).
MEMORY_FIELDS = ("memory_mib", "infer_memory_mib")
TIME_FIELDS = ("train_s_per_epoch", "infer_s", "epochs", "total_s")
EVAL_TIME_FIELDS = {"fast_s": "eval_fast_s", "recbole_s": "eval_recbole_s"}
METRIC_ORDER = ("recall", "mrr", "ndcg", "hit", "precision")
METRIC_NAMES = {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG", "hit": "Hit", "precision": "Precision"}
UNKNOWN_EVAL = "unknown"


def load_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Read records, turning any unreadable or invalid file into a one-line BlossomError."""
    if not paths:
        raise BlossomError("no run records given (--runs is empty)")
    records = []
    for path in paths:
        try:
            records.append(read_record(path))
        except (OSError, ValueError, TypeError) as err:
            raise BlossomError(f"cannot read run record {path}: {err}") from err
    return records


def model_label(model: str, variant: str | None) -> str:
    """`BlossomRec` + variant `noLTIS` -> `BlossomRec-noLTIS`; default variants add nothing."""
    if variant in DEFAULT_VARIANTS or model.endswith(f"-{variant}"):
        return model
    return f"{model}-{variant}"


def metric_keys(frame: pd.DataFrame) -> list[str]:
    """Metric columns present (`recall@10`, ...), ordered Recall, MRR, NDCG, then by k."""
    keys = [c for c in frame.columns if "@" in c and c.split("@")[0] in METRIC_ORDER]
    return sorted(keys, key=lambda c: (METRIC_ORDER.index(c.split("@")[0]), int(c.split("@")[1])))


def metric_name(key: str) -> str:
    """`ndcg@10` -> `NDCG@10` (the paper's spelling)."""
    name, k = key.split("@")
    return f"{METRIC_NAMES[name]}@{k}"


def _number(value: Any) -> float:
    """Numbers pass; strings such as "n/a (no NVIDIA GPU)" and missing values become NaN."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _memory(memory: dict[str, Any]) -> tuple[float, str | None]:
    """Peak memory in MiB from the most device-specific numeric field, and that field's name."""
    for field, source in MEMORY_SOURCES.items():
        value = _number(memory.get(field))
        if not math.isnan(value):
            return value, source
    return math.nan, None


def _row(record: dict[str, Any]) -> dict[str, Any]:
    ok = record["status"] == "ok"
    memory, source = _memory(record["memory"]) if ok else (math.nan, None)
    infer_memory, _ = _memory(record.get("memory_infer") or {}) if ok else (math.nan, None)
    row = {
        "dataset": record["dataset"],
        "model": model_label(record["model"], record.get("variant")),
        "base_model": record["model"],
        "variant": record.get("variant"),
        "max_len": int(record["max_len"]),
        "seed": record["seed"],
        "status": record["status"],
        "eval_mode": record.get("eval_mode") or UNKNOWN_EVAL,
        "device": record["env"].get("device", "unknown device"),
        "memory_mib": memory,
        "infer_memory_mib": infer_memory,
        "memory_source": source,
    }
    row.update({key: _number(value) if ok else math.nan for key, value in record["metrics"].items()})
    row.update({f: _number(record["time"].get(f)) if ok else math.nan for f in TIME_FIELDS})
    eval_time = record.get("eval_time") or {}
    row.update({col: _number(eval_time.get(f)) for f, col in EVAL_TIME_FIELDS.items() if f in eval_time})
    return row


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record; metric, time and memory values of non-ok runs are NaN."""
    return pd.DataFrame([_row(r) for r in records])


def aggregate(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Pool seeds: per group, counts per status and `<col>_mean`/`<col>_std` over ok runs.

    The std is the sample std (ddof 1), NaN for a single run. `memory_source` is the most
    frequent source among ok runs.
    """
    values = [c for c in frame.columns if c in TIME_FIELDS or c in MEMORY_FIELDS or "@" in c
              or c in EVAL_TIME_FIELDS.values()]
    counts = (frame.groupby(keys, dropna=False)["status"].value_counts().unstack(fill_value=0)
              .reindex(columns=list(STATUSES), fill_value=0).add_prefix("n_"))
    ok = frame[frame["status"] == "ok"]
    stats = ok.groupby(keys, dropna=False)[values].agg(["mean", "std"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    source = ok.groupby(keys, dropna=False)["memory_source"].agg(
        lambda s: s.mode().iloc[0] if s.notna().any() else None)
    out = counts.join(stats).join(source).reset_index()
    out.columns.name = None
    return out


def environments(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Distinct `env` blocks (device, versions, commit) with the number of runs each."""
    env = pd.DataFrame([r["env"] for r in records]).astype(str)
    return env.groupby(list(env.columns)).size().rename("runs").reset_index()
