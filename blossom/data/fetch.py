"""Downloads that survive flaky networks, and archive extraction that trusts nothing.

`download` streams to `<dest>.part` and renames to `dest` only when every byte announced by the
server has arrived: a cut connection resumes with an HTTP Range request (also in a later run,
since the `.part` file is kept), a stalled server times out, transient failures are retried a
bounded number of times. `extract` writes the payload of a `.zip` member, a `.gz` or a plain file
and renames it into place only if the archive is intact and the sha256 matches. Every failure is
a one-line BlossomError; `SourceUnavailable` marks the ones where another source may be tried.
Standard library only (urllib), plus tqdm for the progress bar.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from blossom.errors import BlossomError

CHUNK = 1 << 16
USER_AGENT = "blossom-data/0.1 (python-urllib)"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class SourceUnavailable(BlossomError):
    """The file could not be fetched (missing or unreachable); another source may have it."""


class _Retry(Exception):
    """A transient failure: the attempt may be repeated, resuming the partial file."""


@dataclass(frozen=True)
class FetchPolicy:
    """How patient a download is: socket timeout (s), retries after the first try, first backoff (s)."""

    timeout: float = 60.0
    retries: int = 3
    backoff: float = 2.0


def download(url: str, dest: Path, policy: FetchPolicy = FetchPolicy()) -> Path:
    """Fetch `url` to `dest` via `dest.part`, resuming and retrying; return `dest`."""
    part = dest.with_name(f"{dest.name}.part")
    why = ""
    for attempt in range(policy.retries + 1):
        if attempt:
            time.sleep(policy.backoff * 2 ** (attempt - 1))
        try:
            _attempt(url, part, policy.timeout)
        except _Retry as err:
            why = str(err)
            continue
        os.replace(part, dest)
        return dest
    kept = f"; {part.stat().st_size} bytes kept in {part} to resume" if part.exists() else ""
    raise SourceUnavailable(f"{url}: {why} (gave up after {policy.retries + 1} attempts{kept})")


def _attempt(url: str, part: Path, timeout: float) -> None:
    """One request: continue `part` if the server honours Range, else start it over."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is no prefix the server can continue
            part.unlink()
            raise _Retry("server refused to resume; starting over") from None
        if err.code in RETRY_STATUS:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        raise SourceUnavailable(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, ConnectionResetError)):
            raise _Retry(_network_error(err.reason, timeout)) from None
        raise SourceUnavailable(f"{url}: {err.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Retry(_network_error(err, timeout)) from None
    with response:
        _receive(url, response, part, have, timeout)


def _receive(url: str, response: http.client.HTTPResponse, part: Path, have: int, timeout: float) -> None:
    """Stream the body into `part` (appending on a 206 that continues at `have`)."""
    resumed = have > 0 and response.status == 206
    if resumed:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != have:
            part.unlink()
            raise _Retry("server resumed at the wrong offset; starting over")
        total = None if match[2] == "*" else int(match[2])
    else:
        have = 0
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
    print(f"downloading {url}" + (f" (resuming at byte {have})" if resumed else ""), file=sys.stderr)
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=None, leave=False,
        ) as bar:
            while block := response.read(CHUNK):
                out.write(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Retry(_network_error(err, timeout)) from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise _Retry(f"connection closed after {got} of {total} bytes")


def _network_error(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"server stalled: no data for {timeout:g} s"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


@contextmanager
def _payload(archive: Path, member: str) -> Iterator[BinaryIO]:
    """The stream of `member` in a zip (by base name, any folder), of a .gz, or of a plain file."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if PurePosixPath(n).name == member]
            if len(names) != 1:
                raise BlossomError(
                    f"{archive} holds {len(names)} members named {member!r} (need exactly 1)"
                )
            with zf.open(names[0]) as stream:
                yield stream
    elif archive.suffix == ".gz":
        with gzip.open(archive, "rb") as stream:
            yield stream
    else:
        with open(archive, "rb") as stream:
            yield stream


def extract(
    archive: Path, member: str, dest: Path, sha256: str | None = None, expected_from: str = "registry"
) -> str:
    """Write the payload of `archive` to `dest` and return its sha256.

    The bytes go to a temp name first; a truncated or corrupt archive or a checksum that differs
    from `sha256` (when given; `expected_from` says where it was pinned) raises a BlossomError
    and leaves nothing at `dest`. Zip members are CRC-checked, gzip streams checked for their end.
    """
    tmp = dest.with_name(f".{dest.name}.tmp")
    digest = hashlib.sha256()
    try:
        with _payload(archive, member) as source, open(tmp, "wb") as out:
            while block := source.read(CHUNK):
                digest.update(block)
                out.write(block)
    except (zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error) as err:
        tmp.unlink(missing_ok=True)
        raise BlossomError(f"corrupt or truncated archive {archive}: {err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        tmp.unlink()
        raise BlossomError(
            f"checksum mismatch for {member} from {archive}: expected sha256 {sha256} "
            f"({expected_from}), got {actual}"
        )
    os.replace(tmp, dest)
    return actual

