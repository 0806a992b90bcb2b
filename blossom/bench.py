"""Attention microbenchmark: one attention layer per implementation across sequence lengths -> CSV.

Every implementation is a whole layer with its own projections (x [B, L, D] -> [B, L, D]), so the
rows compare what a model would pay, not bare attention cores:

- blossom_triton / blossom_reference: BlossomAttention with the Triton kernels / pure torch.
- naive: causal multi-head attention (H full heads) with a materialised [B, H, L, L] score matrix.
- sdpa: the same layer through F.scaled_dot_product_attention(is_causal=True), the backend torch
  picks (on an H100 with torch 2.11 in bf16: cuDNN's flash kernels; the memory-efficient kernel in
  fp32): the baseline the ratio columns divide by, the fastest causal attention a user gets.
- sdpa_flash: the same, restricted to SDPBackend.FLASH_ATTENTION (FlashAttention-2 as built into
  torch), the kernel "faster than FlashAttention" names; "unavailable" where it cannot run (fp32 on
  a GPU).
- flex: the STIS pattern (offsets 0..7 and powers of two, causal, GQA like BlossomAttention) as a
  FlexAttention BlockMask, compiled; CUDA only. The baselines apply no RoPE.

Dtype: native, not autocast: module.to(dtype) and inputs in dtype, so every matmul, activation and
saved tensor is in that dtype (the DESIGN section 4 anchors used bf16 autocast, which keeps fp32
weights and casts per op; native is what a bf16 model holds).

Phases: "train" = forward + backward with the input requiring grad (grads set to None between
repetitions); "infer" = forward under torch.no_grad(). What the train phase backpropagates
(`backward`): "output_grad" (default) passes a fixed random gradient of the layer's output, made
once per cell (FlashAttention's benchmark convention: the step is the layer's own work); "loss"
backpropagates out.float().square().mean(), whose fp32 pass over the output and its backward are
extra work every impl pays alike (0.72 ms per step at B = 64, L = 4096 on an H100), which pulls the
ratios toward 1 (the tables of sessions 3 to 5 used it).

Modes: "eager" launches every op from Python each repetition, as a training loop does; at short L
the GPU then idles between small kernels and the time is the host's. "cuda_graph" captures the
whole repetition (forward, and backward for train) once after warm-up and replays it, for every
impl alike: the time is the GPU's work, what a graphed (static-shape) training step would pay.
An impl whose code cannot be captured (host syncs, host-to-device copies) gets an error status.
Time is the median over `repeats` repetitions after `warmup` (CUDA events on GPU, perf_counter on
CPU). peak_mem_mib is torch.cuda.max_memory_allocated over the timed repetitions minus what was
allocated before them (parameters, inputs, masks): the working memory of the layer. nvml_peak_mib is
the device's used memory at its sampled peak (all processes, CUDA context included); the cache
allocator is emptied between cells so each cell starts from the same baseline.

A failing cell never ends the run: out-of-memory is recorded as "oom" (and larger L of that impl and
phase are skipped), an impl that cannot run here as "unavailable: <why>", anything else as
"error: <first line>". The CSV is rewritten atomically after every cell.
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from blossom.attention.module import BlossomAttention
from blossom.attention.reference import LOCAL_WINDOW, merge_heads
from blossom.errors import BlossomError
from blossom.io import atomic_write_text
from blossom.measure import MIB, Measure, resolve_device

IMPLS = ("blossom_triton", "blossom_reference", "naive", "sdpa", "sdpa_flash", "flex")
PHASES = ("train", "infer")
MODES = ("eager", "cuda_graph")
BACKWARDS = ("output_grad", "loss")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICES = ("auto", "cuda", "cpu")
COLUMNS = ("impl", "seq_len", "batch_size", "phase", "dtype", "time_ms", "peak_mem_mib", "nvml_peak_mib",
           "status", "device", "mode", "ratio_time_vs_sdpa", "ratio_mem_vs_sdpa", "torch", "triton",
           "backward")  # DESIGN 7's first ten, then ours
OOM_SKIPPED = "oom (skipped after smaller L)"
FLEX_BLOCK = 64  # the block size the DESIGN section 4 Flex/STIS anchor used


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; validated on construction so a typo fails before any GPU time is spent."""

    seq_lens: tuple[int, ...] = (200, 512, 1024, 2048, 4096, 8192)
    batch_size: int = 64
    hidden: int = 128
    heads: int = 8
    kv_heads: int = 2
    dtype: str = "bf16"
    impls: tuple[str, ...] = IMPLS
    phases: tuple[str, ...] = PHASES
    modes: tuple[str, ...] = ("eager",)
    backward: str = "output_grad"
    repeats: int = 20
    warmup: int = 5
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, values, allowed in (("impl", self.impls, IMPLS), ("phase", self.phases, PHASES), ("mode", self.modes, MODES),
                                      ("dtype", (self.dtype,), tuple(DTYPES)), ("device", (self.device,), DEVICES),
                                      ("backward", (self.backward,), BACKWARDS)):
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise BlossomError(f"unknown {name} {', '.join(map(str, unknown))}; choose from {', '.join(allowed)}")
        if min(self.seq_lens, default=0) < 1 or self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise BlossomError("seq lens, batch size and repeats must be >= 1 and warmup >= 0")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise BlossomError(f"need heads | hidden and kv_heads | heads, got {self.hidden}, {self.heads}, {self.kv_heads}")


FULL = BenchConfig()
# A few seconds on a CPU: what the workflow's default (CPU) profile runs. All impls are listed so the
# CSV says why blossom_triton and flex have no numbers there instead of silently omitting them.
QUICK = BenchConfig(seq_lens=(32, 64), batch_size=2, dtype="fp32", repeats=5, warmup=1)


def make_config(quick: bool = False, **overrides: object) -> BenchConfig:
    """The FULL or QUICK preset with the given fields replaced (lists become tuples)."""
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(QUICK if quick else FULL, **fixed)


Builder = Callable[[BenchConfig, int, torch.device], nn.Module]  # (config, L, device) -> the layer of one impl


class Unavailable(Exception):
    """This implementation cannot run in this environment (no CUDA, kernels or compiler missing)."""


class CausalLayer(nn.Module):
    """qkv projection -> attention core on [B, heads, L, d] -> output projection: the baselines' layer."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, core: Callable[[Tensor, Tensor, Tensor], Tensor]):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.to_qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.combine_heads = nn.Linear(hidden, hidden, bias=False)
        self.core = core

    def forward(self, x: Tensor, seq_len: Tensor | None = None) -> Tensor:
        """x [B, L, D] -> [B, L, D]; seq_len is accepted for a common signature (the bench uses full lengths)."""
        b, length, _ = x.shape
        d = self.head_dim
        q, k, v = self.to_qkv(x).split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q, k, v = (t.view(b, length, -1, d).transpose(1, 2) for t in (q, k, v))
        return self.combine_heads(merge_heads(self.core(q, k, v)))


def naive_core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Textbook causal attention: the full score matrix is materialised (and saved for backward)."""
    length = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


def sdpa_core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Fused causal attention, whichever fused backend torch picks for these inputs."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def flash_core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """sdpa_core on torch's FlashAttention backend only (its backward stays on it: autograd
    recorded the flash op). Torch's "no viable backend" error becomes Unavailable."""
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa_core(q, k, v)
    except RuntimeError as err:
        if is_oom(err):
            raise
        raise Unavailable(f"no FlashAttention backend for these inputs ({one_line(err, 120)})") from err


def stis_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """STIS visibility: distance 0..LOCAL_WINDOW-1 or a power of two (the distances of stis_offsets)."""
    distance = q_idx - kv_idx
    return (distance >= 0) & ((distance < LOCAL_WINDOW) | ((distance & (distance - 1)) == 0))


def _build_blossom(backend: str) -> Builder:
    def build(config: BenchConfig, seq_len: int, device: torch.device) -> nn.Module:
        if backend == "triton" and device.type != "cuda":
            raise Unavailable("no CUDA")
        try:
            return BlossomAttention(config.hidden, config.heads, config.kv_heads, backend=backend)
        except ImportError as err:
            raise Unavailable(f"{backend} kernels not importable ({err})") from err

    return build


def _build_mha(core: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Builder:
    def build(config: BenchConfig, seq_len: int, device: torch.device) -> nn.Module:
        return CausalLayer(config.hidden, config.heads, config.heads, core)

    return build


def _build_flex(config: BenchConfig, seq_len: int, device: torch.device) -> nn.Module:
    """Compiled per cell (static shapes, fresh dynamo cache): no recompile limit, compile time in warm-up."""
    if device.type != "cuda":
        raise Unavailable("FlexAttention is benchmarked on CUDA only")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        raise Unavailable(f"no torch.nn.attention.flex_attention ({err})") from err
    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = create_block_mask(stis_mask_mod, None, None, seq_len, seq_len, device=device, BLOCK_SIZE=FLEX_BLOCK)

    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        try:  # compilation happens here, at the first (warm-up) call
            return compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
        except Exception as err:
            if is_oom(err):
                raise
            raise Unavailable(f"flex_attention compile/run failed: {one_line(err)}") from err

    return CausalLayer(config.hidden, config.heads, config.kv_heads, core)


BUILDERS: dict[str, Builder] = {
    "blossom_triton": _build_blossom("triton"),
    "blossom_reference": _build_blossom("torch"),
    "naive": _build_mha(naive_core),
    "sdpa": _build_mha(sdpa_core),
    "sdpa_flash": _build_mha(flash_core),
    "flex": _build_flex,
}


def is_oom(err: BaseException) -> bool:
    """CUDA OOM, or a RuntimeError saying so (cuBLAS/Triton allocations report it as text)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def one_line(err: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters: fits a CSV cell."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text[:limit]


def device_name(device: torch.device) -> str:
    """What the device column says: the GPU's marketing name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def device_slug(name: str) -> str:
    """File-name form of a device name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_out(device: str = "auto", kind: str = "attention") -> Path:
    """results/bench/<kind>_<device-slug>.csv for the device this run would use."""
    return Path("results/bench") / f"{kind}_{device_slug(device_name(resolve_device(device)))}.csv"


def _phase_step(module: nn.Module, x: Tensor, seq_len: Tensor, phase: str,
                backward: str = "output_grad") -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, reset): one timed repetition, and what to undo between repetitions (outside the timing).
    The output gradient of backward="output_grad" is drawn here, once: x's shape is the output's."""
    if phase == "infer":
        def infer() -> None:
            with torch.no_grad():
                module(x, seq_len)

        return infer, lambda: None

    output_grad = torch.randn_like(x)

    def train() -> None:
        out = module(x, seq_len)
        if backward == "loss":
            out.float().square().mean().backward()
        else:
            out.backward(output_grad)

    def reset() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None

    return train, reset


def backward_of(config: BenchConfig, phase: str) -> str:
    """The CSV's backward column: what a train row backpropagated; empty for inference."""
    return config.backward if phase == "train" else ""


def _time_ms(step: Callable[[], None], reset: Callable[[], None], repeats: int, device: torch.device) -> list[float]:
    """Per-repetition milliseconds: CUDA events on GPU (no host sync inside the loop), perf_counter on CPU."""
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            reset()
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    events = []
    for _ in range(repeats):
        reset()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def _capture(step: Callable[[], None], reset: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """One repetition captured as a CUDA graph (after a side-stream warm-up): returns its replay.

    Gradients are set to None right before capture, so the captured backward allocates them in the
    graph's pool and every replay overwrites them (no accumulation, no reset between replays).
    """
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # the warm-up torch.cuda.graph asks for
        step()
    torch.cuda.current_stream(device).wait_stream(stream)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def prepare_cell(config: BenchConfig, impl: str, seq_len: int, phase: str,
                 device: torch.device) -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, reset) of one cell's layer and input (seed 0, full lengths), after the warm-up
    repetitions: what is timed (measure_cell) or profiled (bench_profile) next."""
    torch.manual_seed(0)
    dtype = DTYPES[config.dtype]
    module = BUILDERS[impl](config, seq_len, device).to(device=device, dtype=dtype)
    x = torch.randn(config.batch_size, seq_len, config.hidden, device=device, dtype=dtype, requires_grad=phase == "train")
    lengths = torch.full((config.batch_size,), seq_len, device=device)
    step, reset = _phase_step(module, x, lengths, phase, config.backward)
    for _ in range(config.warmup):
        reset()
        step()
    reset()
    return step, reset


def measure_cell(config: BenchConfig, impl: str, seq_len: int, phase: str, device: torch.device,
                 mode: str = "eager") -> dict[str, object]:
    """Time and memory of one (impl, L, phase, mode); raises on failure (run_cell turns that into a status).

    In cuda_graph mode the memory columns cover the capture, whose private pool holds the
    repetition's working memory, and the replays (which allocate nothing).
    """
    step, reset = prepare_cell(config, impl, seq_len, phase, device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize(device)
    held = torch.cuda.memory_allocated(device) if on_gpu else 0
    with Measure(device) as measure:
        if mode == "cuda_graph":
            if not on_gpu:
                raise Unavailable("CUDA graphs need a CUDA device")
            step, reset = _capture(step, reset, device), lambda: None
        times = _time_ms(step, reset, config.repeats, device)
    result = measure.result()
    peak = result["torch_peak_allocated_mib"]
    return {"time_ms": round(statistics.median(times), 4),
            "peak_mem_mib": round(peak - held / MIB, 1) if on_gpu else peak,
            "nvml_peak_mib": result["nvml_peak_mib"], "status": "ok"}


def marked_step(config: BenchConfig, device: torch.device) -> None:
    """The config's one cell (one impl, L and phase), warmed up, then one step inside
    cudaProfilerStart/Stop: what `ncu --profile-from-start off` is to record."""
    if device.type != "cuda":
        raise BlossomError("`bench step` marks a step for a CUDA profiler (ncu); it needs a CUDA device")
    cells = [(impl, seq_len, phase) for impl in config.impls for seq_len in config.seq_lens for phase in config.phases]
    if len(cells) != 1:
        raise BlossomError(f"`bench step` profiles one cell (one impl, L and phase); got {len(cells)}")
    step, reset = prepare_cell(config, *cells[0], device)
    torch.cuda.synchronize(device)
    reset()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize(device)
    torch.cuda.cudart().cudaProfilerStop()


def release_memory(device: torch.device) -> None:
    """Drop what a finished (or failed) cell left, so the next cell starts from the same baseline."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_cell(config: BenchConfig, impl: str, seq_len: int, phase: str, device: torch.device,
             mode: str = "eager") -> dict[str, object]:
    """measure_cell with every failure turned into a status; memory is released either way."""
    return guarded(lambda: measure_cell(config, impl, seq_len, phase, device, mode), device)


def guarded(cell: Callable[[], dict[str, object]], device: torch.device) -> dict[str, object]:
    """cell() or, if it raises, {"status": ...}: "unavailable: <why>", "oom" or "error: <first line>".
    Memory is released either way."""
    try:
        result = cell()
    except Unavailable as err:
        result = {"status": f"unavailable: {err}"}
    except Exception as err:  # one cell must never end the run
        result = {"status": "oom" if is_oom(err) else f"error: {one_line(err)}"}
    release_memory(device)  # after the except block: the traceback (and its tensors) is gone
    return result


def _ratio(value: object, reference: object) -> float | str:
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and reference > 0:
        return round(value / reference, 3)
    return ""


def _mode(row: dict[str, object]) -> object:
    """A row's mode; rows of CSVs written before modes existed are eager."""
    return row.get("mode", "eager")


def _cell_key(row: dict[str, object]) -> tuple[object, ...]:
    """(L, phase, mode) of a row."""
    return row["seq_len"], row["phase"], _mode(row)


def add_ratios(rows: list[dict[str, object]]) -> None:
    """Fill ratio_*_vs_sdpa from the ok sdpa row of the same L, phase and mode ("" where there is none)."""
    sdpa = {_cell_key(r): r for r in rows if r["impl"] == "sdpa" and r["status"] == "ok"}
    for row in rows:
        ref = sdpa.get(_cell_key(row), {}) if row["status"] == "ok" else {}
        row["ratio_time_vs_sdpa"] = _ratio(row.get("time_ms"), ref.get("time_ms"))
        row["ratio_mem_vs_sdpa"] = _ratio(row.get("peak_mem_mib"), ref.get("peak_mem_mib"))


def write_csv(path: Path, rows: Iterable[dict[str, object]], columns: tuple[str, ...] = COLUMNS) -> None:
    """Atomic rewrite with the columns as header; missing values are empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def run_columns(config: BenchConfig, device: torch.device) -> dict[str, object]:
    """The columns every row of one run shares (this CSV's and the profile's)."""
    return {"batch_size": config.batch_size, "dtype": config.dtype, "device": device_name(device),
            "torch": torch.__version__, "triton": triton_version()}


def run_attention_bench(config: BenchConfig, out: Path, log: Callable[[str], None] = print) -> list[dict[str, object]]:
    """Every (L ascending, phase, mode, impl) cell, in that order so a killed run has all impls at small L.

    Skips: an impl that is unavailable is not retried; after an OOM the larger L of that impl, phase
    and mode are not run (a train OOM says nothing about inference, so phases are tracked apart).
    """
    device = resolve_device(config.device)
    common = run_columns(config, device)
    skipped: dict[tuple[str, str, str], str] = {}
    rows: list[dict[str, object]] = []
    cells = [(L, p, m, i) for L in sorted(set(config.seq_lens)) for p in config.phases for m in config.modes
             for i in config.impls]
    for n, (seq_len, phase, mode, impl) in enumerate(cells, 1):
        known = skipped.get((impl, phase, mode))
        result = {"status": known} if known else run_cell(config, impl, seq_len, phase, device, mode)
        status = str(result["status"])
        if status.startswith("unavailable"):
            skipped.update({(impl, p, mode): status for p in config.phases})
        elif status == "oom":
            skipped[(impl, phase, mode)] = OOM_SKIPPED
        rows.append({"impl": impl, "seq_len": seq_len, "phase": phase, "mode": mode, **common,
                     "backward": backward_of(config, phase), **result})
        add_ratios(rows)
        write_csv(out, rows)
        numbers = ""
        if status == "ok":
            mem = result["peak_mem_mib"]
            numbers = f"{result['time_ms']:.3f} ms" + (f", {mem} MiB" if isinstance(mem, float) else "")
        log(f"[{n}/{len(cells)}] {impl:<17} L={seq_len:<5} {phase:<5} {mode:<10} {status} {numbers}".rstrip())
    return rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def plot_bench(csv_path: Path, out_dir: Path) -> list[Path]:
    """Time and memory vs L (log-log), train and infer panels, one line per impl and mode (CUDA graph
    dashed), OOM as an x at the top.

    Writes <csv stem>_time.{png,svg} and <csv stem>_memory.{png,svg}; returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise BlossomError(f"{csv_path} has no rows to plot")
    described = {key: ", ".join(sorted({r[key] for r in rows})) for key in ("device", "dtype", "batch_size")}
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    modes = list(dict.fromkeys(_mode(r) for r in rows))
    seq_lens = sorted({int(r["seq_len"]) for r in rows})
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label, name in (("time_ms", "time per call (ms)", "time"), ("peak_mem_mib", "peak memory (MiB)", "memory")):
        fig, axes = plt.subplots(1, len(PHASES), figsize=(11, 4.2), squeeze=False)
        for ax, phase in zip(axes[0], PHASES):
            has_data = False
            for (color, impl), mode in itertools.product(enumerate(impls), modes):  # colour = impl, dashes = graph
                cells = [r for r in rows if r["impl"] == impl and r["phase"] == phase and _mode(r) == mode]
                points = sorted((int(r["seq_len"]), v) for r in cells
                                if r["status"] == "ok" and (v := _number(r[metric])) is not None and v > 0)
                ooms = [int(r["seq_len"]) for r in cells if r["status"] == "oom"]
                if not points and not ooms:
                    continue
                has_data |= bool(points)
                series = impl if mode == "eager" else f"{impl} (CUDA graph)"
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{color}", label=series,
                        linestyle="-" if mode == "eager" else "--")
                if ooms:  # at the panel's top edge: an OOM has no value to place on the y axis
                    ax.plot(ooms, [0.96] * len(ooms), "x", color=f"C{color}", markersize=10, mew=2,
                            transform=ax.get_xaxis_transform(), label=f"{series} OOM")
            ax.set_xscale("log", base=2)
            ax.set_xticks(seq_lens, [str(L) for L in seq_lens])
            ax.minorticks_off()
            if has_data:
                ax.set_yscale("log")
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no numeric data", ha="center", va="center", transform=ax.transAxes)
            ax.set(title=phase, xlabel="sequence length L", ylabel=label)
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"one attention layer: {described['device']}, {described['dtype']}, batch {described['batch_size']}")
        fig.tight_layout()
        for suffix in ("png", "svg"):
            path = out_dir / f"{csv_path.stem}_{name}.{suffix}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
