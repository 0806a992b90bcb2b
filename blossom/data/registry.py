"""The datasets the suite knows: where each comes from, how it is checked, how it is prepared.

Every dataset becomes one RecBole atomic file `<data-dir>/<name>/<name>.inter` with the header
`user_id:token  item_id:token  timestamp:float` (tab-separated): users in order of first appearance
in the source, each user's rows in time order. Ties keep the source's row order (a stable sort),
which is what RecBole's own stable sort on [user_id, timestamp] does with the same file.

Sources are tried in this order: a copy bundled with the installed recbole package, then a mirror
directory (`--mirror DIR` or `BLOSSOM_DATA_MIRROR`; layout `DIR/<name>/<file>`, plain or `.gz`),
then each download URL. Checksums apply to every route: `sha256` is of the *uncompressed* source
file. Where no checksum is published, the first successful prepare records it in
`<data-dir>/checksums.lock.json` and later runs must match it: commit that file so that other
machines verify against the same bytes (delete an entry only if the upstream file changed on
purpose). Downloads are kept in `<data-dir>/<name>/downloads/<host>/<path>`, so preparing again
needs no network; an interrupted download stays there as `.part` and the next run resumes it.

Choices per dataset:
- ml-100k: RecBole's bundled `ml-100k.inter` (943 users, 1,682 items, 100,000 interactions); no
  filtering. It is the quick CPU profile, so it needs no download.
- ml-1m: GroupLens `ratings.dat` (checksum = the official file; RecBole's processed `ml-1m.inter`,
  the same rows in the same order, is the fallback). No filtering: 6,040 users, 3,706 items,
  1,000,209 interactions, as in RecBole and the public BlossomRec run. The file is grouped by user
  but not chronological within a user and many rows share a timestamp; the stable sort keeps
  RecBole's tie order.
- amazon-beauty, amazon-video-games: Amazon review data 2014 (McAuley). RecBole's processed ratings
  (`Amazon_Beauty.zip`, `Amazon_Video_Games.zip`: all ratings, real timestamps) reduced to the
  iterative 5-core (users and items with >= 5 interactions, repeated until stable), as the field
  does. Alternative source: the widely used 5-core sequence files (`Amazon_Beauty.txt`,
  `Video_Games.txt`, one line `user item1 item2 ...` per user, in time order, from the S3-Rec /
  CoSeRec pipeline) - they carry no timestamps, so the prepared file gets the 1-based position
  in the user's sequence as a synthetic timestamp (valid for per-user order, i.e. leave-one-out
  with order TO, not for global time splits) and stats.json says so. Repeated (user, item)
  ratings are not merged. The two sources are expected to give different counts (a 5-core of all
  ratings vs. of reviews; not measured here, RecBole's files were unreachable); stats.json names
  the source used.
- gowalla: SNAP `loc-gowalla_totalCheckins.txt` (check-ins with real times, converted to UTC epoch
  seconds; RecBole's processed `gowalla-merged` file is the fallback). Repeated check-ins of a user
  at one location are merged into the latest one, as RecBole's `gowalla-merged` does, then the
  iterative 5-core is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from blossom.errors import BlossomError

RECBOLE = "https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets"
MIRROR_ENV = "BLOSSOM_DATA_MIRROR"
# Format version of the prepared files; bump it when the preparation changes so old files are redone.
PREPARE_VERSION = 1


@dataclass(frozen=True)
class Source:
    """One file a dataset can be prepared from, and the places it can be found.

    `filename` is the file the parser reads. In a download it is the `.zip` member of that name
    (in any folder of the archive) or the content of a `.gz`; in a mirror it is looked for as
    `filename` or `filename.gz` unless `mirror_names` says otherwise.
    """

    filename: str
    fmt: str  # a key of blossom.data.formats.FORMATS
    urls: tuple[str, ...] = ()
    sha256: str | None = None  # of the uncompressed file; None = recorded in the lock file
    bundled: str | None = None  # path inside the installed recbole package
    mirror_names: tuple[str, ...] = ()

    def names_in_mirror(self) -> tuple[str, ...]:
        """The names a mirror may hold this file under."""
        return self.mirror_names or (self.filename, f"{self.filename}.gz")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its sources in order of preference and its preprocessing."""

    name: str
    sources: tuple[Source, ...]
    summary: str  # the preprocessing in one line (stats.json and the dataset table)
    kcore: int = 0  # iterative minimum interactions per user and per item; 0 = no filtering
    merge_repeats: bool = False  # keep only the latest interaction of each (user, item)

    @property
    def recipe(self) -> str:
        """Identifies the preparation; a prepared file made by another recipe is redone."""
        return f"v{PREPARE_VERSION} kcore={self.kcore} merge_repeats={self.merge_repeats}"


def _amazon(name: str, recbole_zip: str, sequences: Source) -> DatasetSpec:
    stem = recbole_zip.removesuffix(".zip")
    ratings = Source(
        f"{stem}.inter",
        "atomic",
        urls=(f"{RECBOLE}/Amazon_ratings/{recbole_zip}",),
        # Only the zip: the shared mirror's `Amazon_Beauty.inter` is the 5-core copy without
        # timestamps, not RecBole's ratings file of the same name.
        mirror_names=(recbole_zip,),
    )
    return DatasetSpec(
        name,
        (ratings, sequences),
        summary="iterative 5-core (users and items >= 5 interactions)",
        kcore=5,
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "ml-100k",
            (
                Source(
                    "ml-100k.inter",
                    "atomic",
                    urls=(f"{RECBOLE}/MovieLens/ml-100k.zip",),
                    sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                    bundled="dataset_example/ml-100k/ml-100k.inter",
                ),
            ),
            summary="no filtering",
        ),
        DatasetSpec(
            "ml-1m",
            (
                Source(
                    "ratings.dat",
                    "grouplens-ratings",
                    urls=("https://files.grouplens.org/datasets/movielens/ml-1m.zip",),
                    sha256="506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f",
                ),
                # The mirror's ml-1m.inter, derived from ratings.dat in RecBole's layout and believed
                # byte-identical to RecBole's file (same header, same row order).
                Source(
                    "ml-1m.inter",
                    "atomic",
                    urls=(f"{RECBOLE}/MovieLens/ml-1m.zip",),
                    sha256="e943abb91013a54c385828fdf5ab4ce49e957ca3a772adb30cde2a7d5539b389",
                ),
            ),
            summary="no filtering",
        ),
        _amazon(
            "amazon-beauty",
            "Amazon_Beauty.zip",
            Source(
                "Amazon_Beauty.txt",
                "user-sequences",
                urls=(
                    "https://raw.githubusercontent.com/QinHsiu/MCLRec/"
                    "bc8d622b1dcf17403bdda00e477ee5df17b128a4/dataset/Amazon_Beauty/Amazon_Beauty.txt",
                ),
                sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
            ),
        ),
        _amazon(
            "amazon-video-games",
            "Amazon_Video_Games.zip",
            Source(
                "Video_Games.txt",
                "user-sequences",
                urls=(
                    "https://raw.githubusercontent.com/KlaineWei/MoCo4SRec/"
                    "27cb274ec4cc249d6b6b4e06ce13230c1211c306/data/Video_Games.txt",
                ),
                sha256="929cd5d06b806927bcdc4374140b3840f07209ebababd5960e5d411ba7aa44f8",
            ),
        ),
        DatasetSpec(
            "gowalla",
            (
                Source(
                    "loc-gowalla_totalCheckins.txt",
                    "snap-checkins",
                    urls=("https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz",),
                ),
                Source(
                    "gowalla.inter",
                    "atomic",
                    urls=(f"{RECBOLE}/Gowalla/merged/gowalla.zip",),
                ),
            ),
            summary="repeated check-ins merged into the latest; iterative 5-core",
            kcore=5,
            merge_repeats=True,
        ),
    )
}


def get(name: str) -> DatasetSpec:
    """The dataset called `name`, or a one-line error listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise BlossomError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}") from None
