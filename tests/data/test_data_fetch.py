"""blossom.data.fetch against a local server that cuts, stalls, 404s and ignores Range."""

from __future__ import annotations

import gzip
import hashlib
import os
import time

import pytest

from blossom.data.fetch import FetchPolicy, SourceUnavailable, download, extract
from blossom.errors import BlossomError

BODY = os.urandom(200_000)
FAST = FetchPolicy(timeout=2.0, retries=0, backoff=0.0)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_download_streams_the_body_and_renames_into_place(server, tmp_path):
    url = server.add("/data.bin", BODY)
    dest = download(url, tmp_path / "data.bin", FAST)
    assert dest.read_bytes() == BODY
    assert os.listdir(tmp_path) == ["data.bin"]
    assert server.requests == [("/data.bin", None)]


def test_cut_connection_is_resumed_with_range_in_the_next_attempt(server, tmp_path):
    url = server.add("/data.bin", BODY, mode="cut")
    dest = download(url, tmp_path / "data.bin", FetchPolicy(timeout=2.0, retries=1, backoff=0.0))
    assert dest.read_bytes() == BODY
    assert server.requests == [("/data.bin", None), ("/data.bin", f"bytes={len(BODY) // 2}-")]


def test_partial_file_survives_a_failed_run_and_a_later_run_resumes_it(server, tmp_path):
    url = server.add("/data.bin", BODY, mode="cut")
    dest = tmp_path / "data.bin"
    with pytest.raises(SourceUnavailable) as err:
        download(url, dest, FAST)
    assert f"connection closed after {len(BODY) // 2} of {len(BODY)} bytes" in _one_line(err)
    assert not dest.exists()
    assert (tmp_path / "data.bin.part").read_bytes() == BODY[: len(BODY) // 2]
    download(url, dest, FAST)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "data.bin.part").exists()
    assert server.requests[-1] == ("/data.bin", f"bytes={len(BODY) // 2}-")


def test_server_ignoring_range_restarts_the_file_instead_of_appending(server, tmp_path):
    url = server.add("/data.bin", BODY, mode="no-range")
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes from another version")
    assert download(url, tmp_path / "data.bin", FAST).read_bytes() == BODY


def test_404_fails_at_once_naming_the_url(server, tmp_path):
    url = server.url("/missing.zip")
    with pytest.raises(SourceUnavailable) as err:
        download(url, tmp_path / "missing.zip", FetchPolicy(timeout=2.0, retries=3, backoff=0.0))
    assert _one_line(err) == f"{url}: HTTP 404 Not Found"
    assert server.requests == [("/missing.zip", None)]  # a 404 is not retried
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mode", ["stall", "stall-headers"])
def test_stalled_server_times_out_after_bounded_retries(server, tmp_path, mode):
    url = server.add("/slow.bin", BODY, mode=mode)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as err:
        download(url, tmp_path / "slow.bin", FetchPolicy(timeout=0.3, retries=1, backoff=0.0))
    assert "server stalled: no data for 0.3 s (gave up after 2 attempts" in _one_line(err)
    assert time.monotonic() - started < 5
    assert len(server.requests) == 2
    assert not (tmp_path / "slow.bin").exists()


def test_extract_finds_a_zip_member_in_any_folder_and_returns_its_sha256(tmp_path, make_zip):
    archive = tmp_path / "ml.zip"
    archive.write_bytes(make_zip({"ml-1m/ratings.dat": b"1::2::3::4\n", "ml-1m/README": b"x"}))
    sha = extract(archive, "ratings.dat", tmp_path / "ratings.dat")
    assert (tmp_path / "ratings.dat").read_bytes() == b"1::2::3::4\n"
    assert sha == hashlib.sha256(b"1::2::3::4\n").hexdigest()


def test_extract_checksum_mismatch_names_both_and_leaves_nothing(tmp_path):
    archive = tmp_path / "f.txt.gz"
    archive.write_bytes(gzip.compress(b"payload"))
    with pytest.raises(BlossomError) as err:
        extract(archive, "f.txt", tmp_path / "f.txt", sha256="0" * 64)
    actual = hashlib.sha256(b"payload").hexdigest()
    assert f"expected sha256 {'0' * 64} (registry), got {actual}" in _one_line(err)
    assert sorted(os.listdir(tmp_path)) == ["f.txt.gz"]


@pytest.mark.parametrize("kind", ["zip", "gz"])
def test_truncated_archive_is_a_clear_error_and_leaves_nothing(tmp_path, make_zip, kind):
    content = os.urandom(50_000)
    whole = make_zip({"f.txt": content}) if kind == "zip" else gzip.compress(content)
    archive = tmp_path / f"f.{kind}"
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BlossomError) as err:
        extract(archive, "f.txt", tmp_path / "f.txt")
    assert _one_line(err).startswith(f"corrupt or truncated archive {archive}: ")
    assert os.listdir(tmp_path) == [archive.name]
