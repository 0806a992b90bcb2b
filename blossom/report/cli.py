"""`blossom report table|plot|compare|index`: what the workflow's report rules call.

Only argparse at import time; pandas and matplotlib load inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TABLES = ("accuracy", "efficiency", "ablation")
PLOTS = ("memory", "time", "accuracy")


def _runs_argument(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """--runs; an empty list is a user error later (load_runs), unless the records are optional."""
    parser.add_argument("--runs", nargs="*", type=Path, default=None if optional else [], metavar="RUN.json",
                        help="run records (results/runs/<dataset>/<model>/L<len>/seed<seed>.json)")


def _announce(paths: list[Path]) -> int:
    for path in paths:
        print(f"wrote {path}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from blossom.report import render, tables
    from blossom.report.runs import load_runs

    records = load_runs(args.runs)
    table = {"accuracy": lambda: tables.accuracy_table(records),
             "efficiency": lambda: tables.efficiency_table(records, args.baseline),
             "ablation": lambda: tables.ablation_table(records, args.reference)}[args.kind]()
    return _announce(render.write_tables(args.out, [table]))


def _plot(args: argparse.Namespace) -> int:
    from blossom.report import plots
    from blossom.report.runs import load_runs

    return _announce(getattr(plots, f"{args.kind}_plot")(load_runs(args.runs), args.out))


def _compare(args: argparse.Namespace) -> int:
    from blossom.report.compare import compare, read_reported
    from blossom.report.render import write_tables
    from blossom.report.runs import load_runs

    sections = compare(load_runs(args.runs), read_reported(args.paper), args.tolerance)
    return _announce(write_tables(args.out, sections, "Comparison with the paper's reported numbers"))


def _index(args: argparse.Namespace) -> int:
    from blossom.report.index import write_index
    from blossom.report.runs import load_runs

    records = load_runs(args.runs) if args.runs is not None else None
    return _announce([write_index(args.out, args.tables, args.plots, records, args.bench)])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `report` and its subcommands to the top-level `blossom` parser."""
    report = subparsers.add_parser("report", help="tables, plots, paper comparison and index from run records")
    sub = report.add_subparsers(dest="report_command", required=True)

    table = sub.add_parser("table", help="a table as <out>.md, .csv and .tex")
    table.add_argument("kind", choices=TABLES)
    _runs_argument(table)
    table.add_argument("--out", type=Path, required=True, help="e.g. results/tables/accuracy.md")
    table.add_argument("--baseline", default="SASRec",
                       help="efficiency: ratios are against this model (default SASRec); other tables ignore it")
    table.add_argument("--reference", default="BlossomRec",
                       help="ablation: deltas are against this variant (default BlossomRec); other tables ignore it")
    table.set_defaults(func=_table)

    plot = sub.add_parser("plot", help="a plot as <out>.png and .svg")
    plot.add_argument("kind", choices=PLOTS)
    _runs_argument(plot)
    plot.add_argument("--out", type=Path, required=True, help="e.g. results/plots/memory_vs_length.png")
    plot.set_defaults(func=_plot)

    comp = sub.add_parser("compare", help="local runs vs paper_tables/reported.csv as <out>.md and .csv")
    _runs_argument(comp)
    comp.add_argument("--paper", type=Path, required=True, help="e.g. paper_tables/reported.csv")
    comp.add_argument("--out", type=Path, required=True, help="e.g. results/tables/comparison.md")
    comp.add_argument("--tolerance", type=float, default=0.03,
                      help="relative tolerance of the accuracy verdicts (default 0.03)")
    comp.set_defaults(func=_compare)

    index = sub.add_parser("index", help="results/index.md linking tables and plots")
    index.add_argument("--out", type=Path, required=True, help="e.g. results/index.md")
    index.add_argument("--tables", nargs="*", type=Path, default=[], metavar="TABLE.md")
    index.add_argument("--plots", nargs="*", type=Path, default=[], metavar="PLOT.png")
    index.add_argument("--bench", nargs="*", type=Path, default=[], metavar="BENCH.csv",
                       help="attention benchmark CSVs (results/bench/attention_<device>.csv)")
    _runs_argument(index, optional=True)
    index.set_defaults(func=_index)
