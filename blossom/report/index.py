"""results/index.md: one page linking every table, plot and benchmark CSV, plus the environment.

Descriptions come from the files themselves (a table's `# title` line, a plot's PNG metadata, a
benchmark's rows), so the index never drifts from what the writers produced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tabulate import tabulate

from blossom.errors import BlossomError
from blossom.io import atomic_write_text
from blossom.report.runs import environments
from blossom.report.targets import read_bench


def _link(path: Path, base: Path) -> str:
    """Link target of `path` relative to the directory of the index (posix separators)."""
    return Path(os.path.relpath(path, base)).as_posix()


def _siblings(path: Path, base: Path, suffixes: tuple[str, ...]) -> str:
    found = [f"[{s[1:]}]({_link(path.with_suffix(s), base)})" for s in suffixes if path.with_suffix(s).exists()]
    return f" ({', '.join(found)})" if found else ""


def table_entry(path: Path, base: Path) -> str:
    """`- [title](table.md) (csv, tex)`: the title is the first line of the markdown file."""
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError) as err:
        raise BlossomError(f"cannot read table {path}: {err or 'empty file'}") from err
    return f"- [{first.lstrip('# ').strip()}]({_link(path, base)}){_siblings(path, base, ('.csv', '.tex'))}"


def plot_entry(path: Path, base: Path) -> str:
    """`- [title](plot.png) (svg): description`, read from the PNG's text metadata."""
    try:
        with Image.open(path) as image:
            meta = dict(getattr(image, "text", {}))
    except OSError as err:
        raise BlossomError(f"cannot read plot {path}: {err}") from err
    title = meta.get("Title", path.stem)
    description = f": {meta['Description']}" if "Description" in meta else ""
    return f"- [{title}]({_link(path, base)}){_siblings(path, base, ('.svg',))}{description}"


def bench_entry(path: Path, base: Path) -> str:
    """`- [attention benchmark](x.csv): impls, lengths, phases, devices` from the CSV's rows."""
    bench = read_bench(path)
    if bench.empty:
        return f"- [attention benchmark]({_link(path, base)}): no rows"

    def listed(column: str) -> str:
        return ", ".join(map(str, sorted(bench[column].unique())))

    return (f"- [attention benchmark]({_link(path, base)}): {listed('impl')}; L {bench['seq_len'].min()}"
            f"-{bench['seq_len'].max()}; {listed('phase')}; {listed('dtype')}; on {listed('device')}")


def _markdown_table(frame: pd.DataFrame) -> str:
    return tabulate(frame.values.tolist(), headers=list(frame.columns), tablefmt="github", disable_numparse=True)


def index_markdown(out: Path, tables: list[Path], plots: list[Path], records: list[dict[str, Any]] | None,
                   bench: list[Path]) -> str:
    """The index page: tables, plots, benchmarks, then the distinct environments with counts."""
    base = out.parent
    parts = ["# blossom results",
             "## Tables", "\n".join(table_entry(t, base) for t in tables) or "_none_",
             "## Plots", "\n".join(plot_entry(p, base) for p in plots) or "_none_"]
    if bench:
        parts += ["## Attention benchmarks", "\n".join(bench_entry(b, base) for b in bench)]
    parts.append("## Environment")
    if records:
        parts += ["Training runs:", _markdown_table(environments(records))]
    else:
        parts.append("_No run records given (pass --runs to list devices and versions)._")
    if bench:
        env = pd.concat([read_bench(b) for b in bench]).astype(str)
        columns = [c for c in ("device", "torch", "triton") if c in env.columns]
        parts += ["Attention benchmarks:", _markdown_table(env.groupby(columns).size().rename("rows").reset_index())]
    return "\n\n".join(parts) + "\n"


def write_index(out: str | Path, tables: list[Path], plots: list[Path],
                records: list[dict[str, Any]] | None = None, bench: Sequence[Path] = ()) -> Path:
    """Write the index atomically; links are relative to its directory."""
    out = Path(out)
    return atomic_write_text(out, index_markdown(out, [Path(t) for t in tables], [Path(p) for p in plots],
                                                 records, [Path(b) for b in bench]))
