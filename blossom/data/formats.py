"""Parsers of the source formats into one frame: `user`, `item` (str tokens), `timestamp` (float).

Rows come back in file order; ordering and filtering happen later (blossom.data.preprocess).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from blossom.errors import BlossomError

COLUMNS = ["user", "item", "timestamp"]


def _frame(user: pd.Series, item: pd.Series, timestamp: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"user": user.to_numpy(), "item": item.to_numpy(),
                         "timestamp": pd.to_numeric(timestamp).astype("float64").to_numpy()})


def read_grouplens(path: Path) -> pd.DataFrame:
    """MovieLens `ratings.dat`: `UserID::MovieID::Rating::Timestamp` (splitting on ':' keeps the C parser)."""
    raw = pd.read_csv(path, sep=":", header=None, usecols=[0, 2, 6], dtype=str, encoding="latin-1")
    return _frame(raw[0], raw[2], raw[6])


def read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic `.inter`: tab-separated, header `name:type` (the type may be missing)."""
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    raw.columns = [str(c).split(":")[0] for c in raw.columns]
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in raw.columns]
    if missing:
        raise BlossomError(f"{path.name} lacks column(s) {', '.join(missing)}; has {', '.join(raw.columns)}")
    return _frame(raw["user_id"], raw["item_id"], raw["timestamp"])


def read_user_sequences(path: Path) -> pd.DataFrame:
    """One line per user, `user item1 item2 ...` in time order; timestamp = 1-based position."""
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            users += fields[:1] * (len(fields) - 1)
            items += fields[1:]
            positions += range(1, len(fields))
    return _frame(pd.Series(users, dtype=str), pd.Series(items, dtype=str), pd.Series(positions))


def read_snap_checkins(path: Path) -> pd.DataFrame:
    """SNAP check-ins: `user  2010-10-19T23:55:27Z  latitude  longitude  location` (tabs); UTC epoch seconds."""
    raw = pd.read_csv(path, sep="\t", header=None, usecols=[0, 1, 4], dtype=str)
    when = pd.to_datetime(raw[1], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    seconds = (when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return _frame(raw[0], raw[4], seconds)


@dataclass(frozen=True)
class Format:
    """A parser and whether the timestamps it yields are real times (or only positions)."""

    read: Callable[[Path], pd.DataFrame]
    real_timestamps: bool = True


FORMATS: dict[str, Format] = {
    "grouplens-ratings": Format(read_grouplens),
    "atomic": Format(read_atomic),
    "user-sequences": Format(read_user_sequences, real_timestamps=False),
    "snap-checkins": Format(read_snap_checkins),
}
