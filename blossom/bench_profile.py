"""Where one attention layer's time goes: per-kernel GPU time of each (impl, L, phase) -> CSV.

The benchmark (bench.py) says how long a layer takes; this says which kernels take it, so a
researcher can see on their own GPU what limits an implementation (and what any layer pays
regardless of its attention: the projections, and with `--backward loss` the loss). Same layers,
inputs, backward and warm-up as `blossom bench attention`, eager mode; then torch.profiler records
`repeats` steps and every kernel's self time is summed and divided by the step count.

On a GPU the rows are CUDA kernels, copies and memsets (device time), and step_total_us is their
sum: the GPU's work per step, which a CUDA-graph replay approaches; an eager step at short L takes
longer, as the GPU waits for the host between kernels (the benchmark's eager vs cuda_graph rows).
Without a GPU the rows are the CPU operators' self times (device column "cpu"): the same breakdown
of a CPU step, never presented as GPU numbers. A cell that fails gets one row with its status (oom, unavailable,
error), like the benchmark's; the CSV is rewritten atomically after every cell.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from blossom import bench
from blossom.measure import resolve_device

COLUMNS = ("impl", "seq_len", "batch_size", "phase", "dtype", "kernel", "calls_per_step", "time_us_per_step",
           "share", "step_total_us", "status", "device", "torch", "triton", "backward")


def kernel_times(step: Callable[[], None], reset: Callable[[], None], steps: int,
                 device: torch.device) -> list[tuple[str, float, float]]:
    """(name, calls per step, microseconds per step) of every kernel (GPU) or operator (CPU) with
    self time in `steps` profiled repetitions, longest first. Self time: a CPU operator's
    children are not counted twice; a GPU kernel has no children."""
    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            reset()
            step()
        if on_gpu:
            torch.cuda.synchronize(device)
    rows = []
    for event in prof.key_averages():
        total = event.self_device_time_total if on_gpu else event.self_cpu_time_total
        if total > 0:
            rows.append((event.key, event.count / steps, total / steps))
    return sorted(rows, key=lambda row: -row[2])


def profile_cell(config: bench.BenchConfig, impl: str, seq_len: int, phase: str,
                 device: torch.device) -> dict[str, object]:
    """{"status": "ok", "kernels": kernel_times(...)} of one cell; raises on failure."""
    step, reset = bench.prepare_cell(config, impl, seq_len, phase, device)
    return {"status": "ok", "kernels": kernel_times(step, reset, config.repeats, device)}


def cell_rows(result: dict[str, object], common: dict[str, object]) -> list[dict[str, object]]:
    """CSV rows of one cell: one per kernel with its share of the step's total, or one status row."""
    if result["status"] != "ok":
        return [{**common, "status": result["status"]}]
    kernels = result["kernels"]
    if not kernels:
        return [{**common, "status": "error: the profiler recorded nothing"}]
    total = sum(us for _, _, us in kernels)
    return [{**common, "kernel": name, "calls_per_step": round(calls, 2), "time_us_per_step": round(us, 2),
             "share": round(us / total, 4), "step_total_us": round(total, 1), "status": "ok"}
            for name, calls, us in kernels]


def summary(rows: list[dict[str, object]], top: int) -> str:
    """Text table per cell: its total and the `top` longest kernels (what the README quotes).
    Rows as run_profile returns them or as read back from its CSV (strings)."""
    lines: list[str] = []
    cells: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for row in rows:
        cells.setdefault((row["impl"], row["seq_len"], row["phase"]), []).append(row)
    for (impl, seq_len, phase), members in cells.items():
        first = members[0]
        if first["status"] != "ok":
            lines.append(f"== {impl} L={seq_len} {phase}: {first['status']}")
            continue
        unit = "GPU" if first["device"] != "cpu" else "CPU (no NVIDIA GPU: operator self times)"
        lines.append(f"== {impl} L={seq_len} {phase}: {float(first['step_total_us']):.0f} us of {unit} time per step")
        for row in members[:top]:
            us, share, calls = (float(row[key]) for key in ("time_us_per_step", "share", "calls_per_step"))
            lines.append(f"  {us:10.1f} us  {share:6.1%}  x{calls:<5g} {str(row['kernel'])[:90]}")
    return "\n".join(lines)


def run_profile(config: bench.BenchConfig, out: Path, log: Callable[[str], None] = print) -> list[dict[str, object]]:
    """Every (L ascending, phase, impl) cell in eager mode; an unavailable impl is not retried."""
    device = resolve_device(config.device)
    meta = bench.run_columns(config, device)
    unavailable: dict[str, str] = {}
    rows: list[dict[str, object]] = []
    for seq_len in sorted(set(config.seq_lens)):
        for phase in config.phases:
            for impl in config.impls:
                if impl in unavailable:
                    result: dict[str, object] = {"status": unavailable[impl]}
                else:
                    result = bench.guarded(lambda: profile_cell(config, impl, seq_len, phase, device), device)
                if str(result["status"]).startswith("unavailable"):
                    unavailable[impl] = str(result["status"])
                cell = cell_rows(result, {"impl": impl, "seq_len": seq_len, "phase": phase, **meta,
                                          "backward": bench.backward_of(config, phase)})
                rows.extend(cell)
                bench.write_csv(out, rows, COLUMNS)
                total = cell[0].get("step_total_us")
                log(f"{impl:<17} L={seq_len:<5} {phase:<5} {cell[0]['status']}" + (f" {total:.0f} us/step" if total else ""))
    return rows
