"""`blossom bench attention|profile|step|counters|plot|targets`: the attention microbenchmark
(blossom/bench.py, which also runs one marked step for Nsight Compute), its per-kernel profile
(blossom/bench_profile.py), what bounds each kernel by its counters (blossom/bench_counters.py),
its plots, and issue 4's efficiency targets read off its CSV (blossom/report/targets.py).

Options left out take their value from the FULL preset (the paper-scale GPU run) or, with --quick,
the QUICK preset (a few seconds on a CPU); names and values are validated in blossom.bench.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blossom.bench import BenchConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench attention`, `profile`, `step`, `counters`, `plot` and `targets` (argparse only: torch
    and pandas are imported by the handlers)."""
    bench = subparsers.add_parser("bench", help="attention microbenchmark across sequence lengths")
    commands = bench.add_subparsers(dest="bench_command", required=True)

    attention = commands.add_parser("attention", help="time and memory of one attention layer per implementation")
    _add_cell_options(attention)
    attention.add_argument("--modes", nargs="+", help="eager and/or cuda_graph (whole repetition replayed; default eager)")
    attention.add_argument("--repeats", type=int, help="timed repetitions, median reported (default 20)")
    attention.add_argument("--out", type=Path, help="CSV (default results/bench/attention_<device-slug>.csv)")
    attention.add_argument("--plots", type=Path, help="also write the plots into this folder")
    attention.set_defaults(func=run_attention)

    profile = commands.add_parser("profile", help="per-kernel GPU time of the same layers (torch.profiler, eager)")
    _add_cell_options(profile)
    profile.add_argument("--repeats", type=int, help="profiled steps, times are per step (default 20)")
    profile.add_argument("--top", type=int, default=15, help="kernels per cell in the printed summary (default 15)")
    profile.add_argument("--out", type=Path, help="CSV (default results/bench/profile_<device-slug>.csv)")
    profile.add_argument("--summary", type=Path, help="also write the printed summary to this text file")
    profile.set_defaults(func=run_profile)

    step = commands.add_parser("step", help="one warmed-up step of one cell, marked for `ncu --profile-from-start off`")
    _add_shape_options(step)
    step.add_argument("--impl", default="blossom_triton", help="the implementation (default blossom_triton)")
    step.add_argument("--seq-len", dest="seq_len", type=int, required=True, help="the sequence length L")
    step.add_argument("--phase", default="train", help="train (fwd+bwd, default) or infer")
    step.set_defaults(func=run_step)

    counters = commands.add_parser("counters", help="what bounds each kernel, from an ncu CSV of `bench step`")
    counters.add_argument("--csv", type=Path, required=True, help="`ncu --csv --page details` output (SpeedOfLight section at least)")
    counters.add_argument("--out", type=Path, help="also write the table: OUT.md, OUT.tex, OUT.csv")
    counters.add_argument("--top", type=int, help="kernels shown, longest first (default all; the CSV keeps all)")
    counters.set_defaults(func=run_counters)

    plot = commands.add_parser("plot", help="plots of an attention benchmark CSV")
    plot.add_argument("--csv", type=Path, required=True, help="a CSV written by `blossom bench attention`")
    plot.add_argument("--out", type=Path, required=True, help="folder for the PNG and SVG files")
    plot.set_defaults(func=run_plot)

    targets = commands.add_parser("targets", help="BlossomRec's time and memory ratios against the targets, from a CSV")
    targets.add_argument("--csv", type=Path, required=True, help="a CSV written by `blossom bench attention`")
    targets.add_argument("--out", type=Path, help="also write the tables: OUT.md, OUT.tex, OUT.csv, OUT_ratios.csv")
    targets.add_argument("--impl", help="the implementation judged (default blossom_triton)")
    targets.add_argument("--baselines", nargs="+", help="the baselines it is divided by, those in the CSV (default sdpa sdpa_flash)")
    targets.set_defaults(func=run_targets)


def _add_cell_options(parser: argparse.ArgumentParser) -> None:
    """What defines the benchmark's cells: shapes, dtype, impls, lengths, phases, warm-up, device."""
    _add_shape_options(parser)
    parser.add_argument("--seq-lens", dest="seq_lens", type=int, nargs="+", help="default 200 512 1024 2048 4096 8192")
    parser.add_argument("--impls", nargs="+", help="blossom_triton blossom_reference naive sdpa sdpa_flash flex (default all)")
    parser.add_argument("--phases", nargs="+", help="train (fwd+bwd) and/or infer (default both)")


def _add_shape_options(parser: argparse.ArgumentParser) -> None:
    """What every cell shares: the preset, shapes, dtype, backward, warm-up, device."""
    parser.add_argument("--quick", action="store_true", help="small CPU-sized preset (L 32 64, batch 2, fp32)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="default 64")
    parser.add_argument("--hidden", type=int, help="model width D (default 128)")
    parser.add_argument("--heads", type=int, help="query heads (default 8)")
    parser.add_argument("--kv-heads", dest="kv_heads", type=int, help="BlossomRec/flex kv heads (default 2)")
    parser.add_argument("--dtype", help="bf16 | fp16 | fp32 (default bf16; native, not autocast)")
    parser.add_argument("--backward", help="what train backpropagates: output_grad (a fixed random output "
                        "gradient, default) | loss (out.float().square().mean(), the tables before session 6)")
    parser.add_argument("--warmup", type=int, help="untimed repetitions first (default 5)")
    parser.add_argument("--device", help="auto | cuda | cpu (default auto)")


def _config(args: argparse.Namespace) -> BenchConfig:
    """The preset with the options given on the command line replaced (validated by BenchConfig)."""
    from blossom import bench

    overrides = {f.name: getattr(args, f.name) for f in fields(bench.BenchConfig) if getattr(args, f.name, None) is not None}
    return bench.make_config(args.quick, **overrides)


def run_attention(args: argparse.Namespace) -> int:
    """Run the benchmark; failed cells are statuses in the CSV, so the exit code is 0 once it is written."""
    from blossom import bench

    config = _config(args)
    out = args.out or bench.default_out(config.device)
    rows = bench.run_attention_bench(config, out)
    counts = Counter(str(r["status"]).split(":")[0] for r in rows)
    print(f"wrote {out} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    if args.plots:
        _print_written(bench.plot_bench(out, args.plots))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    """Profile every cell; like the benchmark, failed cells are statuses and the exit code is 0."""
    from blossom import bench, bench_profile
    from blossom.io import atomic_write_text

    config = _config(args)
    out = args.out or bench.default_out(config.device, kind="profile")
    rows = bench_profile.run_profile(config, out)
    text = bench_profile.summary(rows, args.top)
    print(text)
    if args.summary:
        atomic_write_text(args.summary, text + "\n")
    print(f"wrote {out}" + (f" {args.summary}" if args.summary else ""))
    return 0


def run_step(args: argparse.Namespace) -> int:
    """One marked step of one cell (for ncu); nothing is written: the profiler records it."""
    from blossom import bench
    from blossom.measure import resolve_device

    args.impls, args.seq_lens, args.phases = [args.impl], [args.seq_len], [args.phase]
    config = _config(args)
    bench.marked_step(config, resolve_device(config.device))
    print(f"ran one marked {args.phase} step of {args.impl} at L = {args.seq_len}")
    return 0


def run_counters(args: argparse.Namespace) -> int:
    """Print (and with --out write) what bounds each kernel of an ncu CSV."""
    from blossom import bench_counters
    from blossom.report import render

    table = bench_counters.bounds_table(bench_counters.kernel_bounds(bench_counters.read_launches(args.csv)),
                                        str(args.csv), args.top)
    print(f"{table.caption}\n\n{render.render(table, 'md')}")
    if args.out:
        _print_written(render.write_tables(args.out, [table]))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """Plot an existing CSV (e.g. one fetched from a GPU machine)."""
    from blossom import bench
    from blossom.errors import BlossomError

    if not args.csv.is_file():
        raise BlossomError(f"no such CSV: {args.csv}")
    _print_written(bench.plot_bench(args.csv, args.out))
    return 0


def run_targets(args: argparse.Namespace) -> int:
    """Print (and with --out write) the targets and ratio tables; the exit code is 0 whether or not
    the targets are met: it is a report, the verdict column says."""
    from blossom.report import render, targets

    impl = args.impl or targets.IMPL
    tables = targets.targets_report(args.csv, impl, tuple(args.baselines or targets.BASELINES))
    for table in tables:
        print(f"## {table.title}\n\n{table.caption}\n\n{render.render(table, 'md')}\n")
    if args.out:
        _print_written(render.write_tables(args.out, tables, title=f"Attention efficiency targets: {impl}"))
    return 0


def _print_written(paths: list[Path]) -> None:
    print("wrote " + " ".join(str(p) for p in paths))
