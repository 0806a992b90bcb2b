"""`blossom train`: one (dataset, model, max_len, seed) run -> one run record."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    parser = sub.add_parser("train", help="train and test one model with RecBole, write its run record")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-len", type=int, required=True)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--settings", default="{}", help="JSON object of RecBole settings (the workflow passes config.recbole merged with the model's overrides)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-fast-eval", dest="fast_eval", action="store_false", help="use RecBole's per-row sampled evaluation")
    parser.add_argument("--time-both-evals", action="store_true",
                        help="also time the test evaluation through the other sampled-evaluation path (eval_time in the record)")
    parser.add_argument("--out", required=True, help="run record path (JSON)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from blossom.errors import BlossomError
    from blossom.gpus import claim_gpu

    claim_gpu()  # before CUDA starts: one GPU per job when several are free
    from blossom.train import run

    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        raise BlossomError(f"--settings is not valid JSON: {err}") from None
    record = run(args.dataset, args.model, args.max_len, args.seed, settings, args.data_dir, args.out,
                 fast_eval=args.fast_eval, threads=args.threads, time_both_evals=args.time_both_evals)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()) or record["status"]
    print(f"{args.model} on {args.dataset} L={args.max_len} seed={args.seed}: {metrics} -> {args.out}")
    return 0
