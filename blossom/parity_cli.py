"""`blossom parity`: our attention against the authors' code (blossom/parity.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `parity` command (argparse only: torch and the kernels are imported by the handler)."""
    parser = sub.add_parser("parity", help="compare BlossomAttention with the authors' SparseAttention")
    parser.add_argument("--authors-code", type=Path, required=True,
                        help="checkout of github.com/ronineume/BlossomRec at 8fe1eb2 (holds BlossomAttn.py)")
    parser.add_argument("--backends", nargs="+", default=["torch", "triton"], choices=["torch", "triton"],
                        help="ours to compare (triton runs in the Triton interpreter on the CPU)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: both codes on the GPU, our triton backend as compiled kernels")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 50, 200],
                        help="padded lengths L; each batch holds one full and one shorter sequence")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined
    import torch

    from blossom.errors import BlossomError
    from blossom.io import atomic_write_text
    from blossom.measure import resolve_device
    from blossom.parity import AUTHORS_CODE, TOLERANCE, format_rows, run_parity

    if min(args.lengths) < 16:
        raise BlossomError("--lengths must be >= 16: the authors' code fails below one block (DESIGN 2.7)")
    resolve_device(args.device)  # a clear error for cuda without a GPU
    cases = [[length, max(16, length * 2 // 5)] for length in args.lengths]
    rows = run_parity(args.authors_code, args.backends, cases, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU"
    table = format_rows(rows)
    worst = max(r.worst for r in rows)
    verdict = "agree" if worst <= TOLERANCE else "DIFFER"
    text = (f"# BlossomAttention vs {AUTHORS_CODE} (pure-torch path), fp32 on {where}\n\n"
            f"Relative errors at valid positions; tolerance {TOLERANCE:g}.\n\n{table}\n\n"
            f"Worst {worst:.1e}: the two {verdict}.\n")
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0 if worst <= TOLERANCE else 1
