"""SHA-256 of files, and the lock file that pins checksums no upstream publishes.

`<data-dir>/checksums.lock.json` maps `<dataset>/<file>` to the sha256 of that (uncompressed)
source file, recorded the first time it was prepared. It is meant to be committed: later runs,
here or elsewhere, then fail loudly if the upstream bytes change instead of silently training on
different data.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from blossom.errors import BlossomError
from blossom.io import atomic_write_json

LOCK_NAME = "checksums.lock.json"
CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class ChecksumLock:
    """Checksums recorded on first use, read from and written to one JSON file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise BlossomError(f"checksum lock file {self.path} is not valid JSON: {err}") from None
        if not isinstance(entries, dict):
            raise BlossomError(f"checksum lock file {self.path} must hold a JSON object")
        return entries

    def get(self, key: str) -> str | None:
        """The recorded sha256 of `key` (`<dataset>/<file>`), if any."""
        return self._read().get(key)

    def record(self, key: str, sha256: str) -> None:
        """Add `key` unless present. Serialised with flock: parallel prepares share the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.flock"), "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            entries = self._read()
            if key not in entries:
                entries[key] = sha256
                atomic_write_json(self.path, dict(sorted(entries.items())))
