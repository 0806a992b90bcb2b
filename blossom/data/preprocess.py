"""From parsed interactions to the prepared sequences: time order, merged repeats, k-core, stats."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

HEADER = ["user_id:token", "item_id:token", "timestamp:float"]


def time_ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Users in order of first appearance, each user's rows by timestamp; ties keep file order.

    np.lexsort is stable, so equal timestamps stay as the source lists them - the order RecBole's
    stable sort on [user_id, timestamp] gives the same rows.
    """
    first_seen = pd.factorize(frame["user"])[0]
    order = np.lexsort((frame["timestamp"].to_numpy(), first_seen))
    return frame.iloc[order].reset_index(drop=True)


def keep_latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): the latest (input must be time-ordered)."""
    return frame.drop_duplicates(["user", "item"], keep="last").reset_index(drop=True)


def kcore(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than k interactions, repeated until none is left (row order kept).

    One pass is not enough: removing a sparse item can push a user below k, and so on.
    """
    while True:
        users = frame["user"].map(frame["user"].value_counts())
        items = frame["item"].map(frame["item"].value_counts())
        keep = (users >= k) & (items >= k)
        if keep.all():
            return frame.reset_index(drop=True)
        frame = frame[keep]


def summarize(frame: pd.DataFrame) -> dict[str, float | int]:
    """Counts, per-user sequence lengths and sparsity (1 - interactions / (users * items)); non-empty input."""
    lengths = frame.groupby("user", sort=False).size()
    users, items, interactions = len(lengths), frame["item"].nunique(), len(frame)
    return {
        "users": users,
        "items": items,
        "interactions": interactions,
        "mean_seq_len": round(float(lengths.mean()), 4),
        "median_seq_len": float(lengths.median()),
        "max_seq_len": int(lengths.max()),
        "min_seq_len": int(lengths.min()),
        "sparsity": round(1 - interactions / (users * items), 6),
    }


def to_atomic(frame: pd.DataFrame) -> str:
    """The RecBole atomic `.inter` text; integral timestamps are written without a decimal point."""
    buffer = io.StringIO()
    frame[["user", "item", "timestamp"]].to_csv(
        buffer, sep="\t", header=HEADER, index=False, float_format="%.17g", lineterminator="\n"
    )
    return buffer.getvalue()
