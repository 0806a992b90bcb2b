"""Ordering, merged repeats, k-core and stats on hand-checked examples."""

from __future__ import annotations

import pandas as pd

from blossom.data.preprocess import keep_latest, kcore, summarize, time_ordered, to_atomic


def _frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


def test_time_order_groups_users_by_first_appearance_and_keeps_ties_in_file_order():
    frame = _frame([("u2", "a", 5), ("u1", "b", 3), ("u2", "c", 1), ("u2", "d", 5), ("u1", "e", 3)])
    assert _rows(time_ordered(frame)) == [
        ("u2", "c", 1), ("u2", "a", 5), ("u2", "d", 5), ("u1", "b", 3), ("u1", "e", 3)]


def test_keep_latest_merges_repeats_into_the_last_occurrence():
    frame = _frame([("u1", "x", 1), ("u1", "y", 2), ("u1", "x", 3), ("u2", "x", 4)])
    assert _rows(keep_latest(frame)) == [("u1", "y", 2), ("u1", "x", 3), ("u2", "x", 4)]


def test_kcore_iterates_until_stable():
    # k = 2. First round: D has one interaction and item w one -> (D, z) and (C, w) go.
    # That leaves C and z with one each, so a second round drops (C, z); one pass would keep it.
    frame = _frame([("A", "x", 1), ("A", "y", 2), ("B", "x", 1), ("B", "y", 2),
                    ("C", "w", 1), ("C", "z", 2), ("D", "z", 1)])
    assert _rows(kcore(frame, 2)) == [("A", "x", 1), ("A", "y", 2), ("B", "x", 1), ("B", "y", 2)]


def test_kcore_keeps_everything_already_dense():
    frame = _frame([(u, i, 0) for u in "AB" for i in "xy"])
    assert _rows(kcore(frame, 2)) == _rows(frame)


def test_summarize_counts_lengths_and_sparsity():
    frame = _frame([("A", "x", 1), ("A", "y", 2), ("A", "z", 3), ("B", "x", 1)])
    assert summarize(frame) == {
        "users": 2, "items": 3, "interactions": 4, "mean_seq_len": 2.0, "median_seq_len": 2.0,
        "max_seq_len": 3, "min_seq_len": 1, "sparsity": round(1 - 4 / 6, 6)}


def test_atomic_text_has_recbole_header_and_integral_timestamps_without_decimals():
    frame = _frame([("1", "1193", 978300760.0), ("1", "7", 1.5)])
    assert to_atomic(frame) == (
        "user_id:token\titem_id:token\ttimestamp:float\n1\t1193\t978300760\n1\t7\t1.5\n")
