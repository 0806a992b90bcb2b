"""Scaling plots from run records: memory, time and NDCG@10 against the max sequence length L.

One panel per (device, dataset) (accuracy: also per eval mode), one line per model, seeds pooled
(mean). Configurations that only ran out of memory are marked with an "x" at the top of the
panel; error runs are left out. Each plot is written as PNG and SVG beside it, with its title and
description in the file metadata (the index reads them back).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, NullLocator

from blossom.io import atomic_write_bytes
from blossom.report.runs import aggregate, metric_name, runs_frame

PANEL_KEYS = ["device", "dataset"]
LINE_KEYS = ["model", "max_len"]
X_LABEL = "max sequence length L (items)"
OOM_Y = 1.0  # axes fraction where OOM markers sit: on the top edge
OOM_SPREAD = 1.03  # x factor between models' OOM markers, so markers at one L stay apart


def _panels(frame: pd.DataFrame, panel_keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    agg = aggregate(frame, panel_keys + LINE_KEYS)
    return list(agg.sort_values(panel_keys + LINE_KEYS).groupby(panel_keys, sort=True))


def _draw(ax: Any, agg: pd.DataFrame, column: str, colors: dict[str, str], label_source: bool,
          logy: bool) -> None:
    """One line per model of `<column>_mean` against L, plus OOM markers at the top."""
    if f"{column}_mean" not in agg:  # e.g. no run of this panel measured the column
        agg = agg.assign(**{f"{column}_mean": math.nan})
    for model, rows in agg.groupby("model", sort=True):
        ok = rows[rows[f"{column}_mean"].notna()]
        label = model
        if label_source and ok["memory_source"].notna().any():
            label = f"{model} ({', '.join(sorted(ok['memory_source'].dropna().unique()))})"
        ax.plot(ok["max_len"], ok[f"{column}_mean"], marker="o", label=label, color=colors[model])
        oom = rows[(rows["n_ok"] == 0) & (rows["n_oom"] > 0)]
        if not oom.empty:  # an empty unclipped line breaks constrained layout
            shift = OOM_SPREAD ** (list(colors).index(model) - (len(colors) - 1) / 2)
            ax.plot(oom["max_len"] * shift, [OOM_Y] * len(oom), marker="x", markersize=9, linestyle="none",
                    color=colors[model], transform=ax.get_xaxis_transform(), clip_on=False)
    if (agg["n_ok"].eq(0) & agg["n_oom"].gt(0)).any():
        ax.add_line(Line2D([], [], marker="x", color="black", linestyle="none", label="OOM (top edge)"))
        ax.margins(y=0.15)  # keep data points clear of the markers
    lengths = sorted(agg["max_len"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])  # the lengths run, not powers of two
    ax.xaxis.set_minor_locator(NullLocator())
    if logy and agg[f"{column}_mean"].gt(0).any():  # log needs positive data
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())  # plain numbers (4000), not 4x10^3
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.set_xlabel(X_LABEL)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _save(fig: Figure, out: Path, title: str, description: str) -> list[Path]:
    """PNG at `out` and SVG beside it, written atomically; reproducible SVG ids, no date."""
    paths = []
    for path, fmt in ((out.with_suffix(".png"), "png"), (out.with_suffix(".svg"), "svg")):
        buffer = io.BytesIO()
        metadata = {"Title": title, "Description": description}
        if fmt == "svg":
            metadata["Date"] = None
        with rc_context({"svg.hashsalt": "blossom"}):
            fig.savefig(buffer, format=fmt, metadata=metadata, bbox_inches="tight", dpi=120)
        paths.append(atomic_write_bytes(path, buffer.getvalue()))
    return paths


def _figure(panels: list, columns: list[tuple[str, str]], title: str, label_source: bool = False,
            logy: bool = True) -> Figure:
    """A grid: one row per panel group, one column per (value column, y label)."""
    fig = Figure(figsize=(6 * len(columns), 4.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(columns), squeeze=False)
    models = sorted({m for _, agg in panels for m in agg["model"]})
    colors = {model: f"C{i % 10}" for i, model in enumerate(models)}  # one colour per model throughout
    for (key, agg), row in zip(panels, axes, strict=True):
        for (column, ylabel), ax in zip(columns, row, strict=True):
            _draw(ax, agg, column, colors, label_source, logy)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{' / '.join(map(str, key[1:]))} on {key[0]}", fontsize="medium")
    fig.suptitle(title)
    return fig


def memory_plot(records: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """Peak memory (MiB) vs L, log-log; the legend names the memory source of each line."""
    title = "Peak memory vs max sequence length"
    columns = [("memory_mib", "training peak memory (MiB)"), ("infer_memory_mib", "inference peak memory (MiB)")]
    fig = _figure(_panels(runs_frame(records), PANEL_KEYS), columns, title, label_source=True)
    return _save(fig, Path(out), title, "peak memory (MiB) per model against L, log-log")


def time_plot(records: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """Training time per epoch and inference time (s) vs L, log-log, side by side."""
    title = "Training and inference time vs max sequence length"
    columns = [("train_s_per_epoch", "training time per epoch (s)"), ("infer_s", "inference time (s)")]
    fig = _figure(_panels(runs_frame(records), PANEL_KEYS), columns, title)
    return _save(fig, Path(out), title, "train s/epoch and inference s per model against L, log-log")


def accuracy_plot(records: list[dict[str, Any]], out: str | Path, metric: str = "ndcg@10") -> list[Path]:
    """Test `metric` vs L (log x, linear y), one panel per device, dataset and eval mode."""
    title = f"{metric_name(metric)} vs max sequence length"
    panels = _panels(runs_frame(records), PANEL_KEYS + ["eval_mode"])
    fig = _figure(panels, [(metric, f"test {metric_name(metric)}")], title, logy=False)
    return _save(fig, Path(out), title, f"test {metric_name(metric)} per model against L")
