"""Issue 4's efficiency targets read off an attention benchmark CSV (`blossom bench attention`).

BlossomRec's time and peak memory as ratios to a baseline of the same run (same L, phase and mode),
each target met or not, plus the ratios at every L against every baseline the CSV holds. A
researcher who re-runs the benchmark on their own GPU reads whether the efficiency claim holds
there, and the committed tables are derived from the CSV instead of transcribed from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from blossom.errors import BlossomError
from blossom.report.render import Table, fmt_number

IMPL = "blossom_triton"
BASELINES = ("sdpa", "sdpa_flash")
_VALUES = {"time": "time_ms", "memory": "peak_mem_mib"}


@dataclass(frozen=True)
class Target:
    """impl's metric / the baseline's <= max_ratio in one phase, at one L (None: at every L).

    Memory is judged on eager rows only: a cuda_graph row's peak is the capture's private pool,
    which also holds what capturing allocates once (33-130 MiB above the eager peak at L = 200 in an
    H100 run, for every impl), not the layer's working memory."""

    metric: str
    phase: str
    seq_len: int | None
    max_ratio: float

    @property
    def modes(self) -> tuple[str, ...]:
        return ("eager",) if self.metric == "memory" else ("eager", "cuda_graph")

    def label(self) -> str:
        where = "every L" if self.seq_len is None else f"L = {self.seq_len}"
        phase = {"train": "fwd+bwd", "infer": "inference"}[self.phase]
        return f"{phase} {self.metric}, {where}: <= {self.max_ratio:g}x"


TARGETS = (  # issue 4, "Targets"
    Target("memory", "train", None, 1.0),
    Target("memory", "infer", None, 1.0),
    Target("time", "train", 512, 1.0),
    Target("time", "train", 1024, 0.5),
    Target("time", "train", 4096, 0.2),
    Target("time", "infer", 4096, 0.3),
)


def read_bench(path: str | Path) -> pd.DataFrame:
    """The benchmark rows; CSVs written before the mode column existed are eager."""
    try:
        rows = pd.read_csv(path, dtype={"status": str})
    except (OSError, ValueError) as err:  # pandas' parser and empty-file errors are ValueErrors
        raise BlossomError(f"cannot read benchmark {path}: {err}") from err
    missing = {"impl", "seq_len", "phase", "status", *_VALUES.values()} - set(rows.columns)
    if missing:
        raise BlossomError(f"{path} is not an attention benchmark CSV (no {', '.join(sorted(missing))} column)")
    if "mode" not in rows.columns:
        rows["mode"] = "eager"
    return rows


def _cell(rows: pd.DataFrame, impl: str, seq_len: int, phase: str, mode: str) -> pd.Series | None:
    found = rows[(rows["impl"] == impl) & (rows["seq_len"] == seq_len) & (rows["phase"] == phase) & (rows["mode"] == mode)]
    return None if found.empty else found.iloc[-1]


def _number(row: pd.Series, column: str) -> float | None:
    value = pd.to_numeric(pd.Series([row[column]]), errors="coerce").iloc[0]
    return None if pd.isna(value) or value <= 0 else float(value)


def compare_cell(rows: pd.DataFrame, metric: str, impl: str, baseline: str, seq_len: int, phase: str,
                 mode: str) -> tuple[float | None, str]:
    """(impl / baseline, "") where both cells ran, else (None, why): "no data", "<name> oom" (an
    impl that ran out of memory where the baseline did not is a ratio above any target; the
    reverse, below any), or the status of a cell that did not run ("<name> unavailable: ...")."""
    cells = {name: _cell(rows, name, seq_len, phase, mode) for name in (impl, baseline)}
    if any(cell is None for cell in cells.values()):
        return None, "no data"
    oom = [name for name, cell in cells.items() if str(cell["status"]).startswith("oom")]
    if oom:
        return None, "both oom" if len(oom) == 2 else f"{oom[0]} oom"
    failed = [f"{name} {cell['status']}" for name, cell in cells.items() if cell["status"] != "ok"]
    if failed:
        return None, failed[0]
    a, b = (_number(cell, _VALUES[metric]) for cell in cells.values())
    return (a / b, "") if a is not None and b is not None else (None, f"no {metric} numbers")


def _verdict(ratio: float | None, why: str, max_ratio: float, impl: str, baseline: str) -> bool | None:
    if ratio is not None:
        return ratio <= max_ratio
    return {f"{impl} oom": False, f"{baseline} oom": True}.get(why)


def check_target(rows: pd.DataFrame, target: Target, impl: str, baseline: str, mode: str) -> dict[str, object]:
    """One target in one mode: the ratio (at every L: the worst, and where), and met (None: no data,
    the note says why)."""
    lengths = sorted(rows["seq_len"].unique()) if target.seq_len is None else [target.seq_len]
    judged, reasons = [], []
    for seq_len in lengths:
        ratio, why = compare_cell(rows, target.metric, impl, baseline, int(seq_len), target.phase, mode)
        met = _verdict(ratio, why, target.max_ratio, impl, baseline)
        if met is None:
            reasons.append(why)
        else:
            judged.append((int(seq_len), ratio, why, met))
    if not judged:
        return {"ratio": None, "at": "", "met": None, "note": reasons[0] if reasons else "no data"}
    failed = [j for j in judged if not j[3]]
    # an oom of the impl ranks above any ratio, an oom of the baseline below any
    worst = max(failed or judged, key=lambda j: j[1] if j[1] is not None else float("inf" if failed else "-inf"))
    seq_len, ratio, why, _ = worst
    return {"ratio": ratio, "at": seq_len if target.seq_len is None else "", "met": not failed, "note": why}


def _present(rows: pd.DataFrame, column: str, wanted: tuple[str, ...]) -> list[str]:
    have = set(rows[column])
    return [w for w in wanted if w in have]


def targets_table(rows: pd.DataFrame, source: str, impl: str = IMPL, baselines: tuple[str, ...] = BASELINES) -> Table:
    """Every target against every baseline the CSV holds, in every mode it holds."""
    records = []
    for target in TARGETS:
        for baseline in _present(rows, "impl", baselines):
            for mode in _present(rows, "mode", target.modes):
                result = check_target(rows, target, impl, baseline, mode)
                records.append({"target": target.label(), "baseline": baseline, "mode": mode, **result})
    data = pd.DataFrame(records, columns=["target", "baseline", "mode", "ratio", "at", "met", "note"])

    def shown(record: pd.Series) -> list[str]:
        ratio = "" if record["ratio"] is None or pd.isna(record["ratio"]) else fmt_number(record["ratio"], "ratio")
        if record["at"] != "":
            ratio += f" (worst, L = {record['at']})"
        verdict = {True: "met", False: "not met", None: "no data"}[record["met"]]
        return [record["target"], record["baseline"], record["mode"], ratio or record["note"], verdict]

    cells = pd.DataFrame([shown(r) for _, r in data.iterrows()],
                         columns=["target (issue 4)", "baseline", "mode", f"{impl} / baseline", "verdict"])
    caption = (f"{source} {impl} against each baseline of the same run (same L, phase and mode). Time: median of the "
               "timed repetitions; memory: torch's peak over them. `eager` launches every op from Python, "
               "`cuda_graph` replays one captured repetition (the GPU's work).")
    return Table("Targets (issue 4)", caption, cells, data, empty="No benchmark rows.")


def ratios_table(rows: pd.DataFrame, impl: str = IMPL, baselines: tuple[str, ...] = BASELINES) -> Table:
    """impl / baseline time and memory at every (L, phase, mode) of the CSV."""
    present = _present(rows, "impl", baselines)
    records = []
    keys = rows[rows["impl"] == impl][["seq_len", "phase", "mode"]].drop_duplicates()
    for seq_len, phase, mode in sorted(keys.itertuples(index=False, name=None), key=lambda k: (k[1] != "train", k[2], k[0])):
        record = {"L": int(seq_len), "phase": phase, "mode": mode}
        for metric in _VALUES:
            for baseline in present:
                ratio, why = compare_cell(rows, metric, impl, baseline, int(seq_len), phase, mode)
                record[f"{metric} / {baseline}"] = ratio if ratio is not None else why
        records.append(record)
    data = pd.DataFrame(records)
    cells = data.map(lambda v: fmt_number(v, "ratio") if isinstance(v, float) else str(v))
    return Table("Ratios at every length", f"{impl} / baseline, same run.", cells, data, slug="ratios",
                 empty="No benchmark rows.")


def source_line(rows: pd.DataFrame, path: str | Path) -> str:
    """Where the numbers come from: the CSV, its devices, versions, dtype and batch size."""
    listed = {c: ", ".join(sorted(map(str, rows[c].dropna().unique()))) for c in
              ("device", "torch", "triton", "dtype", "batch_size") if c in rows.columns}
    return "; ".join([f"Source: `{Path(path).name}`", *(f"{k} {v}" for k, v in listed.items())]) + "."


def targets_report(path: str | Path, impl: str = IMPL, baselines: tuple[str, ...] = BASELINES) -> list[Table]:
    """The two tables of one benchmark CSV: the targets, then the ratios at every length. A CSV
    without impl's rows or any baseline's (a CPU run) gives tables that say so, not an error."""
    rows = read_bench(path)
    source = source_line(rows, path)
    absent = [name for name in (impl, *baselines) if name not in set(rows["impl"])]
    if absent:
        source += f" No {', '.join(absent)} rows in it."
    return [targets_table(rows, source, impl, baselines), ratios_table(rows, impl, baselines)]
