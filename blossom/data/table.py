"""The dataset statistics table: prepared datasets next to the paper's numbers where it has any.

A dataset that is not prepared (or whose files no longer match) is a row marked
"missing (not prepared)", so the report still builds when e.g. Gowalla could not be fetched.
Paper rows (`dataset,users,items,interactions,avg_len,sparsity`) match a dataset when the names
agree ignoring case and punctuation ("ML-1M" = "ml-1m", "Amazon Video-Games" = "amazon-video-games").
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from blossom.data.prepare import current_stats
from blossom.data.registry import DatasetSpec
from blossom.errors import BlossomError
from blossom.report.render import Table

MISSING = "missing (not prepared)"
# stats.json key -> (header, formatter)
COLUMNS = {
    "users": ("Users", "{:,.0f}".format),
    "items": ("Items", "{:,.0f}".format),
    "interactions": ("Interactions", "{:,.0f}".format),
    "mean_seq_len": ("Mean len", "{:.2f}".format),
    "median_seq_len": ("Median len", "{:g}".format),
    "max_seq_len": ("Max len", "{:,.0f}".format),
    "sparsity": ("Sparsity", lambda x: f"{100 * x:.2f}%"),
}
# paper CSV column -> stats.json key it is compared with
PAPER_COLUMNS = {"users": "users", "items": "items", "interactions": "interactions",
                 "avg_len": "mean_seq_len", "sparsity": "sparsity"}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def read_paper(path: str | Path) -> pd.DataFrame:
    """The paper's dataset statistics indexed by normalised name (may be empty)."""
    path = Path(path)
    if not path.is_file():
        raise BlossomError(f"paper dataset table {path} not found")
    paper = pd.read_csv(path, dtype={"dataset": str}, thousands=",")
    missing = [c for c in ["dataset", *PAPER_COLUMNS] if c not in paper.columns]
    if missing:
        raise BlossomError(f"{path} lacks column(s) {', '.join(missing)}")
    paper.index = paper["dataset"].map(_key)
    if paper.index.duplicated().any():
        raise BlossomError(f"{path} lists a dataset twice: {', '.join(paper.index[paper.index.duplicated()])}")
    try:
        return paper[list(PAPER_COLUMNS)].apply(pd.to_numeric)
    except ValueError as err:
        raise BlossomError(f"{path}: {err}") from None


def dataset_table(specs: list[DatasetSpec], data_dir: str | Path, paper_csv: str | Path | None = None) -> Table:
    """One row per dataset: status, counts, sequence lengths, sparsity, timestamps, source; paper columns."""
    paper = read_paper(paper_csv) if paper_csv else None
    rows = []
    for spec in specs:
        stats = current_stats(spec, data_dir)
        row = {"dataset": spec.name, "status": "prepared" if stats else MISSING}
        row |= {key: stats[key] if stats else None for key in COLUMNS}
        row["timestamps"] = stats["timestamps"] if stats else None
        row["source"] = stats["source"]["location"] if stats else None
        if paper is not None:
            known = _key(spec.name) in paper.index
            row |= {f"paper_{c}": paper.loc[_key(spec.name), c] if known else None for c in PAPER_COLUMNS}
        rows.append(row)
    data = pd.DataFrame(rows)
    data = data.drop(columns=[c for c in data.columns if c.startswith("paper_") and data[c].isna().all()])
    for col in data.columns:  # whole numbers stay whole in the CSV despite the blanks of missing rows
        if pd.api.types.is_float_dtype(data[col]) and (data[col].dropna() % 1 == 0).all():
            data[col] = data[col].astype("Int64")
    return Table(
        title="Datasets",
        caption=("Prepared datasets (blossom data prepare): per-user sequence lengths; sparsity = "
                 "1 - interactions / (users x items). Synthetic timestamps = position in the user's "
                 "sequence (the source has none)."
                 + (f" Paper columns from {paper_csv}." if paper_csv else "")),
        cells=_cells(data),
        data=data,
    )


def _cells(data: pd.DataFrame) -> pd.DataFrame:
    """Display strings: thousands separators, sparsity in percent, blanks where there is no value."""
    cells = {}
    for col in data.columns:
        if col.startswith("paper_"):  # the paper's numbers as written (its scale is unknown)
            header, fmt = f"{COLUMNS[PAPER_COLUMNS[col.removeprefix('paper_')]][0]} (paper)", _as_written
        else:
            header, fmt = COLUMNS.get(col, (col.capitalize(), str))
        cells[header] = [fmt(v) if pd.notna(v) else "" for v in data[col]]
    return pd.DataFrame(cells)


def _as_written(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"
