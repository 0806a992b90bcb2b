"""What bounds each kernel of one layer step, from Nsight Compute's hardware counters.

`blossom bench profile` says which kernels take a step's time; this says what limits each of them,
so a researcher can tell on their own GPU whether a kernel waits on memory, on arithmetic or on
latency, and so how much a faster kernel could still gain. Two halves:

- `bench.marked_step` (`blossom bench step`): one cell's layer, warmed up as the benchmark warms it,
  then one step between cudaProfilerStart and cudaProfilerStop, so that `ncu --profile-from-start off`
  records that step's kernels and none of the warm-up's.
- `kernel_bounds` (`blossom bench counters`): ncu's CSV (`--csv --page details`, with the
  SpeedOfLight section at least) read into one row per kernel: its time and share of the step, the
  throughput each unit reached as a share of its peak (DRAM; L2; L1/TEX, which also serves shared
  memory; the SMs' busiest pipe), occupancy, registers and the bound. Nsight Compute's SpeedOfLight
  rule reads a kernel whose compute and memory throughputs all stay under 60% of peak as limited by
  latency; otherwise the unit nearest its peak is the bound.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from blossom.errors import BlossomError
from blossom.report.render import Table

_SOL = "GPU Speed Of Light Throughput"
# (section, metric) -> column; a metric name alone is ambiguous ("Memory Throughput" is a % in one
# section and bytes per second in another)
METRICS = {
    (_SOL, "Duration"): "time_us",
    (_SOL, "DRAM Throughput"): "dram_pct",
    (_SOL, "L2 Cache Throughput"): "l2_pct",
    (_SOL, "L1/TEX Cache Throughput"): "l1tex_pct",
    (_SOL, "Compute (SM) Throughput"): "sm_pct",
    ("Occupancy", "Achieved Occupancy"): "occupancy_pct",
    ("Occupancy", "Theoretical Occupancy"): "theoretical_occupancy_pct",
    ("Launch Statistics", "Registers Per Thread"): "registers",
    ("Warp State Statistics", "Warp Cycles Per Issued Instruction"): "cycles_per_issue",
}
REQUIRED = tuple(column for (section, _), column in METRICS.items() if section == _SOL)
UNITS = {"dram_pct": "DRAM", "l2_pct": "L2", "l1tex_pct": "L1/TEX", "sm_pct": "SM"}
LATENCY_BELOW = 60.0  # % of peak: Nsight Compute's SpeedOfLight rule for latency-bound kernels
_MICROSECONDS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3,
                 "s": 1e6, "second": 1e6}
_NCU_COLUMNS = ("ID", "Kernel Name", "Section Name", "Metric Name", "Metric Unit", "Metric Value")


def read_launches(path: Path) -> pd.DataFrame:
    """One row per kernel launch of an ncu details CSV: id, kernel and METRICS' columns (NaN for
    sections not recorded; durations in microseconds whatever unit ncu chose). ncu's own log lines
    (==PROF==, ==WARNING==), which --csv leaves on stdout, are skipped."""
    if not path.is_file():
        raise BlossomError(f"no such ncu CSV: {path}")
    text = "\n".join(line for line in path.read_text().splitlines() if line.startswith('"'))
    rows = pd.read_csv(io.StringIO(text), dtype=str) if text else pd.DataFrame()
    missing = [c for c in _NCU_COLUMNS if c not in rows.columns]
    if missing:
        raise BlossomError(f"{path} is not an ncu details CSV (`ncu --csv --page details`): no {', '.join(missing)}")
    if rows.empty:
        raise BlossomError(f"{path} holds no kernel: ncu recorded nothing (with --profile-from-start off, "
                           "profile `blossom bench step`, which marks its step)")
    rows["column"] = [METRICS.get(key) for key in zip(rows["Section Name"], rows["Metric Name"])]
    rows = rows[rows["column"].notna()].copy()
    rows["value"] = pd.to_numeric(rows["Metric Value"].str.replace(",", ""), errors="coerce")
    is_time = rows["column"] == "time_us"
    unknown = set(rows.loc[is_time, "Metric Unit"]) - set(_MICROSECONDS)
    if unknown:
        raise BlossomError(f"{path}: durations in an unknown unit {sorted(unknown)}; known: {', '.join(_MICROSECONDS)}")
    rows.loc[is_time, "value"] *= rows.loc[is_time, "Metric Unit"].map(_MICROSECONDS)
    launches = rows.pivot_table(index=["ID", "Kernel Name"], columns="column", values="value", aggfunc="first")
    absent = [c for c in REQUIRED if c not in launches.columns or launches[c].isna().any()]
    if absent:
        raise BlossomError(f"{path} lacks {', '.join(absent)} for some kernels: run ncu with --section SpeedOfLight")
    launches = launches.reindex(columns=list(METRICS.values())).reset_index()
    launches = launches.rename(columns={"ID": "id", "Kernel Name": "kernel"})
    return launches.sort_values("id", key=lambda ids: ids.astype(int), ignore_index=True)


def kernel_bounds(launches: pd.DataFrame) -> pd.DataFrame:
    """One row per kernel name, longest first: calls, summed time, share of the step, the
    throughputs and occupancy weighted by each launch's time, registers (the most of any launch),
    the unit nearest its peak and the bound (that unit, or "latency" under LATENCY_BELOW)."""
    weighted = [c for c in METRICS.values() if c not in ("time_us", "registers")]
    parts = launches.assign(**{c: launches[c] * launches["time_us"] for c in weighted})
    grouped = parts.groupby("kernel", sort=False)
    kernels = grouped[["time_us", *weighted]].sum(min_count=1)
    for column in weighted:
        kernels[column] /= kernels["time_us"]
    kernels.insert(0, "calls", grouped.size())
    kernels.insert(2, "share", kernels["time_us"] / kernels["time_us"].sum())
    kernels["registers"] = grouped["registers"].max()
    top = kernels[list(UNITS)]
    kernels["nearest_peak"] = top.idxmax(axis=1).map(UNITS)
    kernels["bound"] = kernels["nearest_peak"].where(top.max(axis=1) >= LATENCY_BELOW, "latency")
    return kernels.sort_values("time_us", ascending=False).reset_index()


def bounds_table(kernels: pd.DataFrame, source: str, top: int | None = None) -> Table:
    """The per-kernel table as a report Table (numbers in the CSV, rounded strings on display)."""
    shown = kernels.head(top) if top else kernels

    def pct(value: float) -> str:
        return "" if pd.isna(value) else f"{value:.0f}"

    cells = pd.DataFrame({
        "kernel": shown["kernel"].str.slice(0, 40),
        "calls": shown["calls"].astype(str),
        "µs": shown["time_us"].map(lambda t: f"{t:.1f}"),
        "share": shown["share"].map(lambda s: f"{100 * s:.1f}%"),
        **{f"{name} %": shown[column].map(pct) for column, name in UNITS.items()},
        "occupancy % (max)": [f"{pct(a)} ({pct(t)})" for a, t in zip(shown["occupancy_pct"], shown["theoretical_occupancy_pct"])],
        "registers": shown["registers"].map(pct),
        "cycles / issue": shown["cycles_per_issue"].map(lambda c: "" if pd.isna(c) else f"{c:.1f}"),
        "bound": [b if b != "latency" else f"latency ({u} {pct(m)}%)" for b, u, m in
                  zip(shown["bound"], shown["nearest_peak"], shown[list(UNITS)].max(axis=1))],
    })
    caption = (f"Source: `{source}`; {len(kernels)} kernels, {kernels['time_us'].sum():.1f} µs in all (ncu serialises "
               "kernels: no overlap). Throughputs are % of each unit's peak (L1/TEX also serves shared memory; SM: the "
               f"busiest pipe); bound: the unit nearest its peak, or latency where none reaches {LATENCY_BELOW:.0f}% "
               "(Nsight Compute's SpeedOfLight rule).")
    return Table("What bounds each kernel", caption, cells, kernels)
