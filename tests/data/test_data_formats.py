"""Each source parser on a tiny file in its real format."""

from __future__ import annotations

import pytest

from blossom.data.formats import FORMATS
from blossom.errors import BlossomError


def _rows(fmt: str, path) -> list[tuple[str, str, float]]:
    frame = FORMATS[fmt].read(path)
    assert list(frame.columns) == ["user", "item", "timestamp"]
    assert str(frame["timestamp"].dtype) == "float64"
    return list(frame.itertuples(index=False, name=None))


def test_grouplens_ratings_dat(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n10::3::4::978298709\n")
    assert _rows("grouplens-ratings", path) == [
        ("1", "1193", 978300760.0), ("1", "661", 978302109.0), ("10", "3", 978298709.0)]


@pytest.mark.parametrize("header", [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",  # RecBole ml-1m / Amazon ratings
    "user_id\titem_id\trating\ttimestamp",  # untyped header (RecBole's merged gowalla converter)
])
def test_recbole_atomic_inter(tmp_path, header):
    path = tmp_path / "x.inter"
    path.write_text(f"{header}\n196\t242\t3\t881250949\nA1\t0205616461\t5\t1369699200\n")
    assert _rows("atomic", path) == [("196", "242", 881250949.0), ("A1", "0205616461", 1369699200.0)]


def test_atomic_inter_without_timestamp_is_refused(tmp_path):
    path = tmp_path / "Amazon_Beauty.inter"
    path.write_text("user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(BlossomError, match="lacks column\\(s\\) timestamp; has user_id, item_id"):
        FORMATS["atomic"].read(path)


def test_user_sequence_txt_uses_positions_as_synthetic_time(tmp_path):
    path = tmp_path / "Amazon_Beauty.txt"
    path.write_text("1 1 2 3\n2 6 7\n\n")
    assert _rows("user-sequences", path) == [
        ("1", "1", 1.0), ("1", "2", 2.0), ("1", "3", 3.0), ("2", "6", 1.0), ("2", "7", 2.0)]
    assert FORMATS["user-sequences"].real_timestamps is False


def test_snap_gowalla_checkins_become_utc_epoch_seconds(tmp_path):
    path = tmp_path / "loc-gowalla_totalCheckins.txt"
    path.write_text(
        "0\t2010-10-19T23:55:27Z\t30.2359091167\t-97.7951395833\t22847\n"
        "0\t2010-10-18T22:17:43Z\t30.2691029532\t-97.7493953705\t420315\n"
    )
    assert _rows("snap-checkins", path) == [("0", "22847", 1287532527.0), ("0", "420315", 1287440263.0)]
