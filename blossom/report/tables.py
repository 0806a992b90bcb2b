"""The suite's tables (accuracy, efficiency, ablation) built from run records.

Each builder returns a `render.Table`; `render.write_tables` writes it as .md, .tex and .csv.
Seeds are pooled (mean ± sample std); failed configurations show "OOM" or "error".
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from blossom.errors import BlossomError
from blossom.report.render import Table, fmt_number, rank_marks, runs_cell, stat_cell, status_cell
from blossom.report.runs import aggregate, metric_keys, metric_name, runs_frame

ACCURACY_KEYS = ["dataset", "max_len", "eval_mode", "model"]
# Efficiency depends on the device, and inference time on the eval mode (uni100 scores 101 items).
EFFICIENCY_KEYS = ["device", "dataset", "max_len", "eval_mode", "model"]
# (value column, display header, format kind) of the efficiency table; eval times only if recorded.
EFFICIENCY_COLUMNS = [
    ("train_s_per_epoch", "Train s/epoch", "seconds"),
    ("infer_s", "Infer s", "seconds"),
    ("memory_mib", "Train peak MiB", "mib"),
    ("infer_memory_mib", "Infer peak MiB", "mib"),
    ("eval_fast_s", "Eval fast s", "seconds"),
    ("eval_recbole_s", "Eval RecBole s", "seconds"),
]
# Columns compared with the baseline as ratios, with their short header.
RATIOS = {"memory_mib": "Train mem", "infer_memory_mib": "Infer mem", "train_s_per_epoch": "Train",
          "infer_s": "Infer"}
COMMON = {"device": "Device", "dataset": "Dataset", "max_len": "L", "eval_mode": "Eval", "model": "Model"}


def against(agg: pd.DataFrame, reference: str, on: list[str]) -> pd.DataFrame:
    """Attach the reference model's counts and means (`ref_<col>`) to each row of its group."""
    ref = agg[agg["model"] == reference].drop(columns="model")
    ref = ref[[c for c in ref.columns if c in on or c.startswith("n_") or c.endswith("_mean")
               or c == "memory_source"]]
    return agg.merge(ref.rename(columns={c: f"ref_{c}" for c in ref.columns if c not in on}),
                     on=on, how="left")


def versus_cell(row: pd.Series, value: float, reference: str, kind: str) -> str:
    """A ratio or delta against the reference: says why when either side has no number."""
    failed = status_cell(row["n_ok"], row["n_oom"])
    if failed:
        return failed
    if pd.isna(row["ref_n_ok"]):
        return f"no {reference} run"
    ref_failed = status_cell(row["ref_n_ok"], row["ref_n_oom"])
    if ref_failed:
        return f"{reference} {ref_failed}"
    return "n/a" if math.isnan(value) else fmt_number(value, kind)


def efficiency_ratios(records: list[dict[str, Any]], baseline: str) -> pd.DataFrame:
    """Pooled efficiency per configuration plus `<col>_ratio` = baseline value / model value.

    A ratio above 1 means the model needs less than the baseline (the paper's "11x reduction"
    direction). Memory ratios need both sides measured by the same source, else NaN.
    """
    agg = aggregate(runs_frame(records), EFFICIENCY_KEYS)
    out = against(agg, baseline, EFFICIENCY_KEYS[:-1])
    for col in RATIOS:
        out[f"{col}_ratio"] = out[f"ref_{col}_mean"] / out[f"{col}_mean"]
    out.loc[out["memory_source"] != out["ref_memory_source"], ["memory_mib_ratio", "infer_memory_mib_ratio"]] = math.nan
    return out.sort_values(EFFICIENCY_KEYS, ignore_index=True)


def _common_cells(agg: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    cells = agg[keys].astype(str).rename(columns=COMMON)
    cells["Runs"] = agg.apply(runs_cell, axis=1)
    return cells


def accuracy_table(records: list[dict[str, Any]]) -> Table:
    """Test metrics per dataset, L, eval mode and model; best bold, second underlined per group."""
    frame = runs_frame(records)
    metrics = metric_keys(frame)
    agg = aggregate(frame, ACCURACY_KEYS).sort_values(ACCURACY_KEYS, ignore_index=True)
    cells = _common_cells(agg, ACCURACY_KEYS)
    marks = pd.DataFrame(index=agg.index)
    for key in metrics:
        cells[metric_name(key)] = agg.apply(stat_cell, axis=1, column=key, kind="metric")
        marks[metric_name(key)] = agg.groupby(ACCURACY_KEYS[:-1])[f"{key}_mean"].transform(rank_marks)
    data = agg[ACCURACY_KEYS + ["n_ok", "n_oom", "n_error"]
               + [f"{key}_{s}" for key in metrics for s in ("mean", "std")]]
    caption = ("Test split, mean ± sample std over seeds (Runs = seeds pooled). Per dataset, L and "
               "eval mode: best **bold**, second-best <u>underlined</u>. Eval: uni100 / pop100 = 100 "
               "uniformly / popularity-sampled negatives, full = full ranking.")
    return Table("Accuracy: test metrics per dataset, max length, eval mode and model", caption, cells,
                 data, marks)


def efficiency_table(records: list[dict[str, Any]], baseline: str = "SASRec") -> Table:
    """Train s/epoch, inference s, peak memory (with its source) and ratios vs `baseline`."""
    agg = efficiency_ratios(records, baseline)
    keys = EFFICIENCY_KEYS if agg["device"].nunique() > 1 else EFFICIENCY_KEYS[1:]
    cells = _common_cells(agg, keys)
    columns = [c for c in EFFICIENCY_COLUMNS if f"{c[0]}_mean" in agg.columns]
    for col, header, kind in columns:
        cells[header] = agg.apply(stat_cell, axis=1, column=col, kind=kind)
        if col == "infer_memory_mib":
            cells["Memory source"] = agg["memory_source"].fillna("")
    for col, short in RATIOS.items():
        cells[f"{short} {baseline}/model"] = [versus_cell(row, row[f"{col}_ratio"], baseline, "ratio")
                                             for _, row in agg.iterrows()]
    data = agg[EFFICIENCY_KEYS + ["n_ok", "n_oom", "n_error", "memory_source"]
               + [f"{c[0]}_{s}" for c in columns for s in ("mean", "std")]
               + [f"{col}_ratio" for col in RATIOS]]
    devices = ", ".join(sorted(agg["device"].unique()))
    caption = (f"Device: {devices}. Mean ± sample std over seeds. Peak memory of the whole run from "
               f"NVML where available, else torch reserved/allocated or process RSS (source column). "
               f"Ratios = {baseline} value / model value at the same dataset, L and eval mode: "
               f"above 1 means less than {baseline}; memory ratios only between equal sources.")
    return Table(f"Efficiency: time and peak memory per model, with ratios vs {baseline}", caption,
                 cells, data)


def ablation_table(records: list[dict[str, Any]], reference: str = "BlossomRec") -> Table:
    """BlossomRec variants per dataset, L and eval mode, with metric deltas vs `reference`."""
    frame = runs_frame(records)
    family = reference.split("-")[0]
    frame = frame[frame["model"].str.split("-").str[0] == family]
    if frame.empty:
        raise BlossomError(f"no {family} runs among the records given to the ablation table")
    metrics = metric_keys(frame)
    agg = against(aggregate(frame, ACCURACY_KEYS), reference, ACCURACY_KEYS[:-1])
    agg = agg.sort_values(ACCURACY_KEYS, ignore_index=True)
    cells = _common_cells(agg, ACCURACY_KEYS).rename(columns={"Model": "Variant"})
    for key in metrics:
        agg[f"{key}_delta"] = agg[f"{key}_mean"] - agg[f"ref_{key}_mean"]
        cells[metric_name(key)] = agg.apply(stat_cell, axis=1, column=key, kind="metric")
    for key in metrics:
        cells[f"Δ {metric_name(key)}"] = [versus_cell(row, row[f"{key}_delta"], reference, "delta")
                                          for _, row in agg.iterrows()]
    data = agg[ACCURACY_KEYS + ["n_ok", "n_oom", "n_error"]
               + [f"{key}_{s}" for key in metrics for s in ("mean", "std", "delta")]]
    caption = (f"{family} variants; Δ = variant mean − {reference} mean at the same dataset, L and "
               f"eval mode (negative: the variant is worse).")
    return Table(f"Ablation: {family} variants vs {reference}", caption, cells, data)
