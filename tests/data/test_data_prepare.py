"""blossom.data.prepare end to end on tiny datasets: network, mirror, checksums, lock file, idempotency."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from blossom.data.checksums import LOCK_NAME
from blossom.data.fetch import FetchPolicy
from blossom.data.prepare import prepare, prepared_paths
from blossom.data.registry import DatasetSpec, Source
from blossom.errors import BlossomError

FAST = FetchPolicy(timeout=2.0, retries=0, backoff=0.0)
# Atomic source, not time-ordered, with a tie (u1 at t=5: items 12 then 11 must stay in that order).
INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u2\t20\t4\t9\n"
    "u1\t12\t3\t5\n"
    "u1\t10\t5\t1\n"
    "u2\t21\t1\t3\n"
    "u1\t11\t2\t5\n"
).encode()
EXPECTED_INTER = (
    "user_id:token\titem_id:token\ttimestamp:float\n"
    "u2\t21\t3\nu2\t20\t9\n"
    "u1\t10\t1\nu1\t12\t5\nu1\t11\t5\n"
)
SHA = hashlib.sha256(INTER).hexdigest()


def _spec(url: str = "", sha256: str | None = SHA, fmt: str = "atomic",
          filename: str = "tiny.inter") -> DatasetSpec:
    source = Source(filename, fmt, urls=(url,) if url else (), sha256=sha256)
    return DatasetSpec("tiny", (source,), summary="no filtering")


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_prepare_from_a_download_writes_time_ordered_inter_and_stats(server, tmp_path, make_zip):
    url = server.add("/tiny.zip", make_zip({"tiny/tiny.inter": INTER}))
    stats, done = prepare(_spec(url), tmp_path, policy=FAST)
    inter, stats_path = prepared_paths(tmp_path, "tiny")
    assert done and inter.read_text() == EXPECTED_INTER
    assert json.loads(stats_path.read_text()) == stats
    assert stats["users"] == 2 and stats["items"] == 5 and stats["interactions"] == 5
    assert (stats["mean_seq_len"], stats["median_seq_len"], stats["max_seq_len"]) == (2.5, 2.5, 3)
    assert stats["sparsity"] == 0.5
    assert stats["timestamps"] == "real" and "timestamps_note" not in stats
    assert stats["source"] == {"kind": "url", "location": url, "file": "tiny.inter", "format": "atomic",
                               "sha256": SHA}
    assert stats["inter_sha256"] == hashlib.sha256(EXPECTED_INTER.encode()).hexdigest()


def test_prepare_is_idempotent_and_reuses_a_completed_download(server, tmp_path, make_zip):
    url = server.add("/tiny.zip", make_zip({"tiny.inter": INTER}))
    prepare(_spec(url), tmp_path, policy=FAST)
    inter, _ = prepared_paths(tmp_path, "tiny")
    mtime = inter.stat().st_mtime_ns
    assert prepare(_spec(url), tmp_path, policy=FAST)[1] is False
    assert inter.stat().st_mtime_ns == mtime
    inter.write_text("tampered\n")  # no longer matches its stats: redone, from the kept download
    assert prepare(_spec(url), tmp_path, policy=FAST)[1] is True
    assert inter.read_text() == EXPECTED_INTER
    assert len(server.requests) == 1


def test_checksum_mismatch_fails_in_one_line_and_drops_the_download(server, tmp_path, make_zip):
    url = server.add("/tiny.zip", make_zip({"tiny.inter": INTER}))
    with pytest.raises(BlossomError) as err:
        prepare(_spec(url, sha256="f" * 64), tmp_path, policy=FAST)
    message = str(err.value)
    assert "\n" not in message
    assert f"expected sha256 {'f' * 64} (pinned in blossom.data.registry), got {SHA}" in message
    assert _files(tmp_path) == []  # no .inter, no stats, no download left to be reused


def test_truncated_download_fails_cleanly(server, tmp_path, make_zip):
    whole = make_zip({"tiny.inter": INTER})
    url = server.add("/tiny.zip", whole[: len(whole) - 30])
    with pytest.raises(BlossomError, match=r"^corrupt or truncated archive .*tiny\.zip: "):
        prepare(_spec(url), tmp_path, policy=FAST)
    assert _files(tmp_path) == []


def test_mirror_copy_is_used_instead_of_the_network(server, tmp_path):
    url = server.add("/tiny.zip", b"never fetched")
    mirror = tmp_path / "mirror"
    (mirror / "tiny").mkdir(parents=True)
    (mirror / "tiny" / "tiny.inter.gz").write_bytes(gzip.compress(INTER))
    stats, _ = prepare(_spec(url), tmp_path / "data", mirror=mirror, policy=FAST)
    assert stats["source"]["kind"] == "mirror"
    assert stats["source"]["location"] == str(mirror / "tiny" / "tiny.inter.gz")
    assert prepared_paths(tmp_path / "data", "tiny")[0].read_text() == EXPECTED_INTER
    assert server.requests == []


def test_mirror_copy_is_checked_too(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "tiny").mkdir(parents=True)
    (mirror / "tiny" / "tiny.inter").write_bytes(INTER.replace(b"u2", b"u3"))
    with pytest.raises(BlossomError, match=r"checksum mismatch for tiny\.inter from .*mirror/tiny/tiny\.inter:"):
        prepare(_spec(), tmp_path / "data", mirror=mirror, policy=FAST)
    assert _files(tmp_path / "data") == []


def test_unavailable_dataset_names_the_urls_and_the_mirror_path(server, tmp_path):
    url = server.url("/gone.zip")
    (tmp_path / "mirror").mkdir()
    with pytest.raises(BlossomError) as err:
        prepare(_spec(url), tmp_path / "data", mirror=tmp_path / "mirror", policy=FAST)
    assert str(err.value) == (
        f"dataset tiny is unavailable: mirror {tmp_path / 'mirror' / 'tiny'} holds none of "
        f"tiny.inter, tiny.inter.gz; {url}: HTTP 404 Not Found"
    )
    assert not (tmp_path / "data").exists()


def test_unpublished_checksum_is_recorded_then_enforced(server, tmp_path, make_zip):
    url = server.add("/tiny.zip", make_zip({"tiny.inter": INTER}))
    prepare(_spec(url, sha256=None), tmp_path, policy=FAST)
    lock = tmp_path / LOCK_NAME
    assert json.loads(lock.read_text()) == {"tiny/tiny.inter": SHA}
    # Upstream changes: a fresh prepare must refuse the new bytes.
    server.add("/tiny.zip", make_zip({"tiny.inter": INTER + b"u9\t99\t1\t1\n"}))
    for path in (tmp_path / "tiny").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(BlossomError, match=rf"expected sha256 {SHA} \(recorded in {lock}\)"):
        prepare(_spec(url, sha256=None), tmp_path, policy=FAST)
    assert not prepared_paths(tmp_path, "tiny")[0].exists()


def test_sequence_file_gets_synthetic_timestamps_noted_in_the_stats(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "tiny").mkdir(parents=True)
    (mirror / "tiny" / "seq.txt").write_text("7 3 1 2\n8 1\n")
    stats, _ = prepare(_spec(sha256=None, fmt="user-sequences", filename="seq.txt"), tmp_path / "data", mirror)
    assert prepared_paths(tmp_path / "data", "tiny")[0].read_text() == (
        "user_id:token\titem_id:token\ttimestamp:float\n7\t3\t1\n7\t1\t2\n7\t2\t3\n8\t1\t1\n"
    )
    assert stats["timestamps"] == "synthetic"
    assert "1-based position" in stats["timestamps_note"]


def test_kcore_dataset_that_filters_everything_is_an_error(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "tiny").mkdir(parents=True)
    (mirror / "tiny" / "seq.txt").write_text("7 3 1 2\n")
    spec = DatasetSpec("tiny", (Source("seq.txt", "user-sequences"),), summary="5-core", kcore=5)
    with pytest.raises(BlossomError, match="no interactions left after preprocessing"):
        prepare(spec, tmp_path / "data", mirror)
    assert not prepared_paths(tmp_path / "data", "tiny")[0].exists()
