"""Local runs against the paper's reported numbers (paper_tables/reported.csv).

Accuracy rows are matched on dataset, model label, metric@k and, where the reported row knows
them, max_len and eval mode; an unknown length or eval mode is compared with every local one.
Reported values on a percent scale are divided by 100 first. Efficiency claims ("up to 11x")
are set next to the largest ratios measured between BlossomRec and the full-attention baselines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from blossom.errors import BlossomError
from blossom.report.render import Table, fmt_number, runs_cell, stat_cell, status_cell
from blossom.report.runs import METRIC_ORDER, aggregate, metric_name, model_label, runs_frame
from blossom.report.tables import COMMON, EFFICIENCY_KEYS, RATIOS, efficiency_ratios, versus_cell

COLUMNS = ("dataset", "model", "variant", "max_len", "metric", "k", "value", "scale", "eval_mode", "source")
SCALES = {"fraction": 1.0, "percent": 0.01, "ratio": 1.0}
KNOWN_EVAL_MODES = ("uni100", "pop100", "full")
# Claim metric -> (ratio column of tables.efficiency_ratios, what it measures here).
CLAIMS = {
    "train_memory_reduction": ("memory_mib_ratio", "training-phase peak memory (training + validation)"),
    "infer_memory_reduction": ("infer_memory_mib_ratio", "test-evaluation peak memory"),
    "train_time_speedup": ("train_s_per_epoch_ratio", "train s/epoch"),
    "infer_time_speedup": ("infer_s_ratio", "inference s"),
}
UNKNOWN = "unknown"
MATCH_KEYS = ["dataset", "model", "max_len", "eval_mode"]
HEADLINE_COLUMNS = EFFICIENCY_KEYS + ["baseline"]
HEADLINE_DATA = (HEADLINE_COLUMNS + ["n_ok", "n_oom", "n_error", "ref_n_ok", "ref_n_oom", "memory_source"]
                 + [f"{col}_mean" for col in RATIOS] + [f"{col}_ratio" for col in RATIOS])


def _is_unknown(value: str) -> bool:
    return value == "" or value.startswith(UNKNOWN)


def _check_row(line: int, row: pd.Series) -> None:
    """Raise a BlossomError naming the CSV line of a malformed reported row."""
    def fail(why: str) -> None:
        raise BlossomError(f"reported table line {line}: {why}")

    if row["metric"] not in METRIC_ORDER and row["metric"] not in CLAIMS:
        fail(f"metric {row['metric']!r} is neither one of {METRIC_ORDER} nor a claim {tuple(CLAIMS)}")
    if row["scale"] not in SCALES:
        fail(f"scale {row['scale']!r} not in {tuple(SCALES)}")
    if (row["scale"] == "ratio") != (row["metric"] in CLAIMS):
        fail("claims use scale 'ratio'; accuracy metrics use 'fraction' or 'percent'")
    if row["metric"] in METRIC_ORDER and not row["k"].isdigit():
        fail(f"accuracy metric needs an integer k, got {row['k']!r}")
    if not (_is_unknown(row["max_len"]) or row["max_len"].isdigit()):
        fail(f"max_len must be an integer or 'unknown', got {row['max_len']!r}")
    try:
        float(row["value"])
    except ValueError:
        fail(f"value {row['value']!r} is not a number")


def read_reported(path: str | Path) -> pd.DataFrame:
    """Load and validate the reported table; adds `normalised`: the value on the scale of
    the run records (percent / 100; fractions and ratios as they are)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise BlossomError(f"cannot read reported table {path}: {err}") from err
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BlossomError(f"reported table {path} lacks columns {', '.join(missing)}")
    table = table.apply(lambda col: col.str.strip())
    for index, row in table.iterrows():
        _check_row(index + 2, row)  # line 1 is the header
    table["normalised"] = table["value"].astype(float) * table["scale"].map(SCALES)
    return table


def verdict(local: float, reported: float, tolerance: float) -> str:
    """Relative comparison: |local/reported - 1| <= tolerance is "within tolerance"."""
    relative = (local - reported) / reported
    if abs(relative) <= tolerance + 1e-12:  # the edge itself counts as within
        return "within tolerance"
    return "above" if relative > 0 else "below"


def _local_verdict(row: pd.Series, key: str, reported: float, tolerance: float) -> str:
    failed = status_cell(row["n_ok"], row["n_oom"])
    if failed:
        return f"local {failed}"
    value = row[f"{key}_mean"]
    return "no local value" if math.isnan(value) else verdict(value, reported, tolerance)


def _reported_cells(rep: pd.Series) -> dict[str, str]:
    """What the paper says about one cell, as shown in every row compared with it."""
    key = f"{rep['metric']}@{rep['k']}"
    value = rep["value"]
    if rep["scale"] == "percent":
        value = f"{rep['value']} % ({rep['normalised']:.4f})"
    return {
        "Dataset": rep["dataset"], "Model": rep["model"], "Metric": metric_name(key), "Reported": value,
        "Rep. variant": "unknown (default compared)" if _is_unknown(rep["variant"]) else rep["variant"],
        "Rep. L": "unknown (every local L)" if _is_unknown(rep["max_len"]) else rep["max_len"],
        "Rep. eval": rep["eval_mode"] or UNKNOWN,
    }


def _matches(agg: pd.DataFrame, rep: pd.Series) -> pd.DataFrame:
    """Local aggregate rows a reported row is compared with."""
    label = model_label(rep["model"], None if _is_unknown(rep["variant"]) else rep["variant"])
    found = agg[(agg["dataset"] == rep["dataset"]) & (agg["model"] == label)]
    if not _is_unknown(rep["max_len"]):
        found = found[found["max_len"] == int(rep["max_len"])]
    if rep["eval_mode"] in KNOWN_EVAL_MODES:
        found = found[found["eval_mode"] == rep["eval_mode"]]
    return found


def _compared(rep: pd.Series, local: pd.Series, tolerance: float) -> tuple[dict[str, str], dict[str, Any]]:
    """Display cells and CSV data of one reported cell against one local configuration."""
    key = f"{rep['metric']}@{rep['k']}"
    value = local[f"{key}_mean"]
    delta = value - rep["normalised"]
    numeric = not math.isnan(delta)
    text = _local_verdict(local, key, rep["normalised"], tolerance)
    cells = {
        "Local L": str(local["max_len"]), "Local eval": local["eval_mode"],
        "Local": stat_cell(local, key, "metric"), "Runs": runs_cell(local),
        "Δ": fmt_number(delta, "delta") if numeric else "",
        "Rel. Δ": f"{delta / rep['normalised']:+.1%}" if numeric else "",
        "Verdict": text,
    }
    data = {
        "local_max_len": local["max_len"], "local_eval_mode": local["eval_mode"],
        "local_mean": value, "local_std": local[f"{key}_std"],
        "n_ok": local["n_ok"], "n_oom": local["n_oom"], "n_error": local["n_error"],
        "delta": delta, "rel_delta": delta / rep["normalised"], "verdict": text,
    }
    return cells, data


def accuracy_comparison(records: list[dict[str, Any]], reported: pd.DataFrame, tolerance: float) -> Table:
    """One row per (reported cell, matching local configuration); "no local run" if none."""
    agg = aggregate(runs_frame(records), MATCH_KEYS)
    accuracy = reported[reported["metric"].isin(METRIC_ORDER)]
    for key in accuracy["metric"] + "@" + accuracy["k"]:  # reported metrics no run measured: NaN
        for column in (f"{key}_mean", f"{key}_std"):
            agg[column] = agg.get(column, math.nan)
    no_run = dict.fromkeys(("Local L", "Local eval", "Local", "Runs", "Δ", "Rel. Δ"), "")
    cells, data = [], []
    for _, rep in accuracy.iterrows():
        matches = _matches(agg, rep)
        if matches.empty:
            cells.append(_reported_cells(rep) | no_run | {"Verdict": "no local run"})
            data.append(rep.to_dict() | {"verdict": "no local run"})
        for _, local in matches.iterrows():
            shown, numbers = _compared(rep, local, tolerance)
            cells.append(_reported_cells(rep) | shown)
            data.append(rep.to_dict() | numbers)
    caption = (f"Tolerance: relative |local / reported − 1| <= {tolerance:g}. Reported percent values "
               "are compared as fractions. Where the paper's max length, eval mode or variant is "
               "unknown, every local L and eval mode is listed and the suite's default variant is used.")
    return Table("Accuracy vs reported", caption, pd.DataFrame(cells), pd.DataFrame(data).convert_dtypes())


def _headline(records: list[dict[str, Any]], models: tuple[str, ...], baselines: tuple[str, ...]) -> pd.DataFrame:
    """Efficiency ratios of `models` against each baseline that has runs."""
    present = set(runs_frame(records)["model"])
    frames = [efficiency_ratios(records, b).assign(baseline=b) for b in baselines if b in present]
    if not frames:
        return pd.DataFrame(columns=HEADLINE_DATA)
    rows = pd.concat(frames, ignore_index=True)
    return rows.loc[rows["model"].isin(models), HEADLINE_DATA].reset_index(drop=True)


def efficiency_comparison(records: list[dict[str, Any]], models: tuple[str, ...],
                          baselines: tuple[str, ...]) -> Table:
    """Memory, train and inference ratios baseline / model per device, dataset, L and eval mode."""
    rows = _headline(records, models, baselines)
    cells = rows[HEADLINE_COLUMNS].astype(str).rename(columns=COMMON | {"baseline": "Baseline"})
    for col, short in RATIOS.items():
        cells[f"{short} baseline/model"] = [versus_cell(row, row[f"{col}_ratio"], row["baseline"], "ratio")
                                            for _, row in rows.iterrows()]
    caption = ("Ratios = baseline value / model value (above 1: the model needs less). Train memory is "
               "the peak while fitting (training + validation), infer memory the peak of the test "
               "evaluation, each from the same source on both sides.")
    data = rows.drop(columns=["ref_n_ok", "ref_n_oom"])
    return Table("Efficiency: BlossomRec vs full attention", caption, cells, data, slug="efficiency")


def claims_comparison(records: list[dict[str, Any]], reported: pd.DataFrame, models: tuple[str, ...],
                      baselines: tuple[str, ...]) -> Table:
    """Each reported efficiency claim next to the largest matching ratio measured here."""
    rows = _headline(records, models, baselines)
    cells, data = [], []
    for _, claim in reported[reported["metric"].isin(CLAIMS)].iterrows():
        column, measures = CLAIMS[claim["metric"]]
        ratios = rows[column].astype(float).dropna()
        best = rows.loc[ratios.idxmax()] if not ratios.empty else None
        where = (f"{best['dataset']} L={best['max_len']} {best['eval_mode']}, {best['model']} vs "
                 f"{best['baseline']} on {best['device']}") if best is not None else "no measurement"
        cells.append({"Claim": claim["metric"].replace("_", " "), "Reported": f"up to {float(claim['value']):g}×",
                      "Measured max": fmt_number(ratios.max(), "ratio") if best is not None else "n/a",
                      "Measured as": measures, "Where": where, "Source": claim["source"]})
        data.append(claim.to_dict() | {"measured_max": ratios.max() if best is not None else math.nan,
                                       "measured_as": measures, "where": where})
    caption = ("Claims from paper_tables (scale 'ratio') next to the largest ratio measured here; "
               "training claims against the fitting peak, inference claims against the test-evaluation peak.")
    return Table("Efficiency claims vs measured", caption, pd.DataFrame(cells), pd.DataFrame(data),
                 slug="claims", empty="No efficiency claim (scale 'ratio') in the reported table.")


def compare(records: list[dict[str, Any]], reported: pd.DataFrame, tolerance: float = 0.03,
            models: tuple[str, ...] = ("BlossomRec", "BlossomRec-improved"),
            baselines: tuple[str, ...] = ("SASRec", "SASRec-SDPA")) -> list[Table]:
    """The comparison report's sections: accuracy verdicts, efficiency ratios, efficiency claims."""
    return [accuracy_comparison(records, reported, tolerance),
            efficiency_comparison(records, models, baselines),
            claims_comparison(records, reported, models, baselines)]
