"""Cell formatting and writing of report tables as markdown, LaTeX and CSV (atomically).

A `Table` keeps display strings (`cells`), their emphasis (`marks`: "best" / "second" / "")
and the numbers behind them (`data`, what the CSV holds), so markdown and LaTeX render the same
table with their own markup and a spreadsheet gets numbers, not "0.41 ± 0.01" strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import LATEX_ESCAPE_RULES, tabulate

from blossom.io import atomic_write_text

MARKUP = {
    "md": {"best": "**{}**", "second": "<u>{}</u>"},
    "tex": {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}"},
}
_LATEX = str.maketrans(LATEX_ESCAPE_RULES | {"±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$"})


@dataclass
class Table:
    """One rendered table: a section title, a caption, display cells, emphasis and CSV data."""

    title: str
    caption: str
    cells: pd.DataFrame
    data: pd.DataFrame
    marks: pd.DataFrame | None = None
    slug: str = ""  # CSV name suffix for the second and later sections of a file
    empty: str = "No runs matched."  # shown instead of an empty table


def fmt_number(value: float, kind: str) -> str:
    """Fixed precision per quantity: metrics 4 decimals, seconds 4 significant digits, MiB whole."""
    return {"metric": f"{value:.4f}", "seconds": f"{value:.4g}", "mib": f"{value:.0f}",
            "ratio": f"{value:.2f}×", "delta": f"{value:+.4f}"}[kind]


def status_cell(n_ok: int, n_oom: int) -> str | None:
    """What a cell with no successful run shows: "OOM" if any run ran out of memory, else "error"."""
    if n_ok:
        return None
    return "OOM" if n_oom else "error"


def stat_cell(row: pd.Series, column: str, kind: str) -> str:
    """`mean ± std` over the ok seeds of an aggregate row (plain mean for one seed)."""
    failed = status_cell(row["n_ok"], row["n_oom"])
    if failed:
        return failed
    mean, std = row[f"{column}_mean"], row[f"{column}_std"]
    if math.isnan(mean):
        return "n/a"
    return fmt_number(mean, kind) + ("" if math.isnan(std) else f" ± {fmt_number(std, kind)}")


def runs_cell(row: pd.Series) -> str:
    """Seeds pooled in a row: "2", or "2 (+1 OOM)" when some seeds failed."""
    failed = [f"+{row[f'n_{s}']} {'OOM' if s == 'oom' else s}" for s in ("oom", "error") if row[f"n_{s}"]]
    return f"{row['n_ok']}" + (f" ({', '.join(failed)})" if failed else "")


def rank_marks(values: pd.Series) -> pd.Series:
    """Best ("best") and second-best ("second") of numeric values, higher is better.

    Values are ranked as displayed (rounded to 4 decimals, dense ranks): ties share a mark.
    Fewer than two values get no marks.
    """
    marks = pd.Series("", index=values.index)
    if values.notna().sum() < 2:
        return marks
    ranks = values.round(4).rank(method="dense", ascending=False)
    marks[ranks == 1] = "best"
    marks[ranks == 2] = "second"
    return marks


def _marked(table: Table, fmt: str) -> pd.DataFrame:
    cells = table.cells.map(lambda s: s.translate(_LATEX)) if fmt == "tex" else table.cells.copy()
    if table.marks is not None:
        for col in table.marks.columns:
            for idx, mark in table.marks[col].items():
                if mark:
                    cells.at[idx, col] = MARKUP[fmt][mark].format(cells.at[idx, col])
    return cells


def render(table: Table, fmt: str) -> str:
    """The table body as github markdown ("md") or a LaTeX tabular ("tex")."""
    cells = _marked(table, fmt)
    headers = [h.translate(_LATEX) for h in cells.columns] if fmt == "tex" else list(cells.columns)
    tablefmt = {"md": "github", "tex": "latex_raw"}[fmt]
    if cells.empty:
        return f"_{table.empty}_" if fmt == "md" else f"% {table.empty}"
    return tabulate(cells.values.tolist(), headers=headers, tablefmt=tablefmt, disable_numparse=True)


def write_tables(out: str | Path, sections: list[Table], title: str | None = None) -> list[Path]:
    """Write `<out>.md`, `<out>.tex` and one CSV per section; return the paths written.

    The markdown starts with `# title` (default: the first section's title), which the index
    uses as the description; with several sections each gets its own `##` heading.
    """
    out = Path(out)
    title = title or sections[0].title
    md = [f"# {title}"]
    tex = [f"% {title}"]
    written = []
    for table in sections:
        heading = table.title if len(sections) > 1 else ""
        md += [f"## {heading}" if heading else "", table.caption, render(table, "md")]
        tex += [f"% {heading}" if heading else "", f"% {table.caption}", render(table, "tex")]
        csv = out.with_suffix(".csv") if not table.slug else out.with_name(f"{out.stem}_{table.slug}.csv")
        written.append(atomic_write_text(csv, table.data.to_csv(index=False)))
    md_text = "\n\n".join(part for part in md if part) + "\n"
    written.append(atomic_write_text(out.with_suffix(".md"), md_text))
    written.append(atomic_write_text(out.with_suffix(".tex"), "\n".join(part for part in tex if part) + "\n"))
    return written
