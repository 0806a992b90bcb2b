"""Finding a dataset's source file: the copy bundled with recbole, a mirror, or a download."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from blossom.data.fetch import FetchPolicy, SourceUnavailable, download
from blossom.data.registry import MIRROR_ENV, DatasetSpec, Source
from blossom.errors import BlossomError


@dataclass(frozen=True)
class Found:
    """A local file holding `source.filename` (maybe inside a .zip or .gz) and where it came from."""

    source: Source
    path: Path
    kind: str  # "bundled" | "mirror" | "url"
    location: str  # the path or URL, for stats.json


def download_path(data_dir: Path, spec: DatasetSpec, url: str) -> Path:
    """Where a download is kept: `<data-dir>/<name>/downloads/<host>/<url path>` (distinct per URL)."""
    parts = urlsplit(url)
    return data_dir / spec.name / "downloads" / parts.netloc / PurePosixPath(parts.path).relative_to("/")


def recbole_file(relative: str) -> Path | None:
    """A file inside the installed recbole package, located without importing it."""
    found = importlib.util.find_spec("recbole")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / relative


def _local(spec: DatasetSpec, data_dir: Path, mirror: Path | None, tried: list[str]) -> Found | None:
    """A source already on this machine: the recbole copy, the mirror, or a finished download."""
    for source in spec.sources:
        if source.bundled:
            path = recbole_file(source.bundled)
            if path is not None and path.is_file():
                return Found(source, path, "bundled", str(path))
            tried.append(f"no recbole package copy of {source.bundled}")
    if mirror is None:
        tried.append(f"no mirror given (--mirror or {MIRROR_ENV})")
    else:
        folder = Path(mirror) / spec.name
        for source in spec.sources:
            for name in source.names_in_mirror():
                if (folder / name).is_file():
                    return Found(source, folder / name, "mirror", str(folder / name))
        names = [name for source in spec.sources for name in source.names_in_mirror()]
        tried.append(f"mirror {folder} holds none of {', '.join(names)}")
    for source in spec.sources:
        for url in source.urls:
            if download_path(data_dir, spec, url).is_file():
                return Found(source, download_path(data_dir, spec, url), "url", url)
    return None


def available_locally(spec: DatasetSpec, data_dir: Path, mirror: Path | None) -> bool:
    """True when preparing `spec` needs no network (the workflow plans offline runs with this)."""
    return _local(spec, Path(data_dir), mirror, []) is not None


def locate(spec: DatasetSpec, data_dir: Path, mirror: Path | None, policy: FetchPolicy) -> Found:
    """The first source that is available: bundled, then in the mirror, then downloaded.

    A download already completed by an earlier run is reused. When nothing is available the
    one-line error names every place checked: the mirror folder and each URL with its failure.
    """
    tried: list[str] = []
    found = _local(spec, data_dir, mirror, tried)
    if found is not None:
        return found
    for source in spec.sources:
        for url in source.urls:
            try:
                return Found(source, download(url, download_path(data_dir, spec, url), policy), "url", url)
            except SourceUnavailable as err:
                tried.append(str(err))
    raise BlossomError(f"dataset {spec.name} is unavailable: {'; '.join(tried)}")
