"""`blossom data prepare|stats`: argument parsing only; pandas and friends load inside the handlers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from blossom.data import registry
from blossom.data.fetch import FetchPolicy


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    data = subparsers.add_parser("data", help="download, check and prepare datasets; dataset table")
    sub = data.add_subparsers(dest="data_command", required=True)

    prep = sub.add_parser("prepare", help="write <data-dir>/<DATASET>/<DATASET>.inter and .stats.json")
    prep.add_argument("dataset", help=f"one of: {', '.join(sorted(registry.DATASETS))}")
    prep.add_argument("--mirror", type=Path, default=os.environ.get(registry.MIRROR_ENV) or None,
                      help=f"local copies as DIR/<dataset>/<file>[.gz], used before the network "
                           f"(default: ${registry.MIRROR_ENV})")
    prep.add_argument("--data-dir", type=Path, default=Path("data"))
    prep.add_argument("--timeout", type=float, default=FetchPolicy.timeout,
                      help="seconds without data before a download attempt is abandoned")
    prep.add_argument("--retries", type=int, default=FetchPolicy.retries,
                      help="extra attempts after a transient download failure (each resumes)")
    prep.set_defaults(func=_prepare)

    stats = sub.add_parser("stats", help="dataset statistics table (markdown + csv), vs the paper's")
    stats.add_argument("--data-dir", type=Path, default=Path("data"))
    stats.add_argument("--datasets", nargs="+", required=True)
    stats.add_argument("--out", type=Path, required=True, help="markdown path; the csv goes next to it")
    stats.add_argument("--paper", type=Path, help="paper_tables/dataset_stats.csv (may be empty)")
    stats.set_defaults(func=_stats)


def _prepare(args: argparse.Namespace) -> int:
    from blossom.data.prepare import prepare

    spec = registry.get(args.dataset)
    stats, done = prepare(spec, args.data_dir, args.mirror, FetchPolicy(args.timeout, args.retries))
    print(f"{spec.name}: {'prepared' if done else 'up to date'}: {stats['users']:,} users, "
          f"{stats['items']:,} items, {stats['interactions']:,} interactions, "
          f"{stats['timestamps']} timestamps (source: {stats['source']['location']})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from blossom.data.table import dataset_table
    from blossom.report.render import write_tables

    table = dataset_table([registry.get(name) for name in args.datasets], args.data_dir, args.paper)
    for path in write_tables(args.out, [table]):
        print(path)
    return 0
