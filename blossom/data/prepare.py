"""One dataset from its source to `<data-dir>/<name>/<name>.inter` and `<name>.stats.json`.

Both files are written atomically (the .inter first; the stats record its sha256), so an
interrupted run leaves either the old pair or a pair that no longer matches and is redone.
A prepared pair that matches (same recipe, .inter sha256 as recorded) is left alone.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from blossom.data.checksums import LOCK_NAME, ChecksumLock, sha256_file
from blossom.data.fetch import FetchPolicy, extract
from blossom.data.formats import FORMATS
from blossom.data.preprocess import keep_latest, kcore, summarize, time_ordered, to_atomic
from blossom.data.registry import DatasetSpec, Source
from blossom.data.sources import locate
from blossom.errors import BlossomError
from blossom.io import atomic_write_json, atomic_write_text

SYNTHETIC_NOTE = (
    "the source has no timestamps: timestamp = 1-based position in the user's sequence "
    "(valid for per-user order, e.g. leave-one-out with order TO; not for global time splits)"
)


def prepared_paths(data_dir: str | Path, name: str) -> tuple[Path, Path]:
    """The `.inter` file and its stats JSON for dataset `name`."""
    folder = Path(data_dir) / name
    return folder / f"{name}.inter", folder / f"{name}.stats.json"


def current_stats(spec: DatasetSpec, data_dir: str | Path) -> dict[str, Any] | None:
    """The stats of an existing prepared file if it is complete and made by the current recipe."""
    inter, stats_path = prepared_paths(data_dir, spec.name)
    if not (inter.is_file() and stats_path.is_file()):
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except json.JSONDecodeError:
        return None
    if stats.get("recipe") != spec.recipe or stats.get("inter_sha256") != sha256_file(inter):
        return None
    return stats


def _parse(source: Source, path: Path) -> pd.DataFrame:
    try:
        return FORMATS[source.fmt].read(path)
    except ValueError as err:  # pandas parser errors and bad numbers; their text may span lines
        why = " ".join(str(err).split())
        raise BlossomError(f"cannot parse {source.filename} as {source.fmt}: {why}") from None


def prepare(
    spec: DatasetSpec, data_dir: str | Path, mirror: Path | None = None, policy: FetchPolicy = FetchPolicy()
) -> tuple[dict[str, Any], bool]:
    """Prepare `spec` unless already current; return its stats and whether any work was done."""
    data_dir = Path(data_dir)
    stats = current_stats(spec, data_dir)
    if stats is not None:
        return stats, False
    inter, stats_path = prepared_paths(data_dir, spec.name)
    lock = ChecksumLock(data_dir / LOCK_NAME)
    found = locate(spec, data_dir, mirror, policy)
    key = f"{spec.name}/{found.source.filename}"
    expected, expected_from = found.source.sha256, "pinned in blossom.data.registry"
    if expected is None:
        expected, expected_from = lock.get(key), f"recorded in {lock.path}"
    inter.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=inter.parent, prefix=".prepare-") as tmp:
        try:
            actual = extract(found.path, found.source.filename, Path(tmp) / found.source.filename,
                             expected, expected_from)
        except BlossomError as err:
            if found.kind != "url":
                raise
            found.path.unlink(missing_ok=True)  # never reuse a download that failed its checks
            raise BlossomError(f"{err} (download deleted; the next run fetches it again)") from None
        frame = _parse(found.source, Path(tmp) / found.source.filename)
    frame = time_ordered(frame)
    if spec.merge_repeats:
        frame = keep_latest(frame)
    if spec.kcore:
        frame = kcore(frame, spec.kcore)
    if frame.empty:
        raise BlossomError(f"dataset {spec.name}: no interactions left after preprocessing ({spec.summary})")
    text = to_atomic(frame)
    atomic_write_text(inter, text)
    real = FORMATS[found.source.fmt].real_timestamps
    stats = {
        "dataset": spec.name,
        **summarize(frame),
        "timestamps": "real" if real else "synthetic",
        **({} if real else {"timestamps_note": SYNTHETIC_NOTE}),
        "preprocessing": spec.summary,
        "source": {"kind": found.kind, "location": found.location, "file": found.source.filename,
                   "format": found.source.fmt, "sha256": actual},
        "recipe": spec.recipe,
        "inter_file": inter.name,
        "inter_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    atomic_write_json(stats_path, stats)
    if expected is None:
        lock.record(key, actual)
    return stats, True
