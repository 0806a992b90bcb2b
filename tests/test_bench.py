"""The attention benchmark on CPU at toy sizes: CSV shape, statuses, ratios, OOM handling, plots, CLI."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch

from blossom import bench, bench_cli
from blossom.errors import BlossomError

TINY = dict(seq_lens=[24, 16], batch_size=2, hidden=32, heads=4, kv_heads=2, dtype="fp32",
            repeats=2, warmup=1, device="cpu")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run(tmp_path: Path, **overrides: object) -> list[dict[str, str]]:
    out = tmp_path / "attention_cpu.csv"
    bench.run_attention_bench(bench.make_config(**{**TINY, **overrides}), out, log=lambda line: None)
    return read_csv(out)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_csv_columns_rows_and_statuses(tmp_path: Path) -> None:
    rows = run(tmp_path)
    with open(tmp_path / "attention_cpu.csv") as handle:
        assert tuple(handle.readline().strip().split(",")) == bench.COLUMNS
    assert len(rows) == 2 * len(bench.PHASES) * len(bench.IMPLS)
    first = len(bench.PHASES) * len(bench.IMPLS)
    assert [int(r["seq_len"]) for r in rows[:first]] == [16] * first  # ascending L, all impls first
    status = {(r["impl"], r["seq_len"], r["phase"]): r["status"] for r in rows}
    assert all(status[("blossom_triton", L, p)] == "unavailable: no CUDA" for L in ("16", "24") for p in bench.PHASES)
    assert all(s.startswith("unavailable: ") for (impl, *_), s in status.items() if impl == "flex")
    for row in rows:
        assert row["device"] == "cpu" and row["dtype"] == "fp32" and row["batch_size"] == "2"
        assert row["torch"] == torch.__version__
        assert row["backward"] == ("output_grad" if row["phase"] == "train" else "")
        if row["impl"] in ("blossom_reference", "naive", "sdpa", "sdpa_flash"):
            assert row["status"] == "ok"
            assert float(row["time_ms"]) > 0
            assert row["peak_mem_mib"] == row["nvml_peak_mib"] == "n/a (no NVIDIA GPU)"
        else:
            assert row["time_ms"] == row["ratio_time_vs_sdpa"] == ""


def test_ratios_are_against_sdpa_of_same_length_and_phase(tmp_path: Path) -> None:
    rows = run(tmp_path, impls=["naive", "sdpa"])
    sdpa = {(r["seq_len"], r["phase"]): float(r["time_ms"]) for r in rows if r["impl"] == "sdpa"}
    for row in rows:
        expected = float(row["time_ms"]) / sdpa[(row["seq_len"], row["phase"])]
        assert float(row["ratio_time_vs_sdpa"]) == pytest.approx(expected, abs=1e-3)
        assert row["ratio_mem_vs_sdpa"] == ""  # no GPU memory numbers on CPU


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's own note on why flash declined
def test_sdpa_flash_is_sdpa_on_the_flash_backend() -> None:
    """Same values as the default dispatch (CPU: both exact fp32 causal softmaxes), and torch's
    "no available kernel" (flash needs one head dim for q, k and v) is an unavailable cell."""
    q, k, v = torch.randn(3, 2, 4, 24, 8).unbind(0)
    torch.testing.assert_close(bench.flash_core(q, k, v), bench.sdpa_core(q, k, v), rtol=1e-5, atol=1e-6)
    with pytest.raises(bench.Unavailable, match="no FlashAttention backend"):
        bench.flash_core(q, k, torch.randn(2, 4, 24, 16))


def test_cuda_graph_mode_has_its_own_rows_and_ratios(tmp_path: Path) -> None:
    """Without CUDA the graph rows say why; eager rows are unaffected and take eager sdpa as base."""
    rows = run(tmp_path, impls=["naive", "sdpa"], phases=["infer"], modes=["eager", "cuda_graph"])
    assert [(r["seq_len"], r["mode"]) for r in rows] == [("16", "eager")] * 2 + [("16", "cuda_graph")] * 2 + \
        [("24", "eager")] * 2 + [("24", "cuda_graph")] * 2
    for row in rows:
        if row["mode"] == "eager":
            assert row["status"] == "ok" and row["ratio_time_vs_sdpa"] != ""
        else:
            assert row["status"] == "unavailable: CUDA graphs need a CUDA device" and row["ratio_time_vs_sdpa"] == ""


def test_ratio_is_taken_within_one_mode() -> None:
    rows = [{"impl": i, "seq_len": 64, "phase": "train", "mode": m, "status": "ok", "time_ms": t, "peak_mem_mib": 1.0}
            for i, m, t in (("sdpa", "eager", 2.0), ("sdpa", "cuda_graph", 1.0),
                            ("naive", "eager", 4.0), ("naive", "cuda_graph", 4.0))]
    bench.add_ratios(rows)
    assert [r["ratio_time_vs_sdpa"] for r in rows] == [1.0, 1.0, 2.0, 4.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_replay_computes_what_eager_does() -> None:
    """The captured Triton layer's replay gives the eager gradients: graph timings time the real work."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    module = bench.BUILDERS["blossom_triton"](bench.FULL, 300, device).to(device)
    x = torch.randn(4, 300, 128, device=device, requires_grad=True)
    lengths = torch.tensor([300, 120, 17, 1], device=device)
    step, reset = bench._phase_step(module, x, lengths, "train")
    reset()
    step()
    eager = [x.grad.clone()] + [p.grad.clone() for p in module.parameters() if p.grad is not None]
    replay = bench._capture(step, reset, device)
    graphed = [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]
    assert len(graphed) == len(eager)
    for _ in range(2):  # replays overwrite (no accumulation), and really compute: NaN is gone after
        for grad in graphed:
            grad.fill_(float("nan"))
        replay()
        torch.cuda.synchronize()
        for want, got in zip(eager, graphed):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_memory_ratio_uses_numbers_only() -> None:
    rows = [{"impl": "sdpa", "seq_len": 8, "phase": "train", "status": "ok", "time_ms": 2.0, "peak_mem_mib": 10.0},
            {"impl": "naive", "seq_len": 8, "phase": "train", "status": "ok", "time_ms": 3.0, "peak_mem_mib": 25.0},
            {"impl": "naive", "seq_len": 8, "phase": "infer", "status": "ok", "time_ms": 3.0, "peak_mem_mib": 25.0}]
    bench.add_ratios(rows)
    assert (rows[1]["ratio_time_vs_sdpa"], rows[1]["ratio_mem_vs_sdpa"]) == (1.5, 2.5)
    assert rows[2]["ratio_time_vs_sdpa"] == ""  # no sdpa row for infer


class ExplodingLayer(torch.nn.Module):
    """Raises what a too-large CUDA allocation raises, from the forward."""

    def __init__(self, error: Exception):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.error = error

    def forward(self, x: torch.Tensor, seq_len: torch.Tensor | None = None) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_oom_is_recorded_and_larger_lengths_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   error: Exception) -> None:
    monkeypatch.setitem(bench.BUILDERS, "naive", lambda config, seq_len, device: ExplodingLayer(error))
    rows = run(tmp_path, impls=["naive", "sdpa"])
    naive = {(r["seq_len"], r["phase"]): r["status"] for r in rows if r["impl"] == "naive"}
    assert naive == {("16", "train"): "oom", ("16", "infer"): "oom",
                     ("24", "train"): bench.OOM_SKIPPED, ("24", "infer"): bench.OOM_SKIPPED}
    assert all(r["status"] == "ok" for r in rows if r["impl"] == "sdpa")


def test_other_failures_become_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.BUILDERS, "naive",
                        lambda config, seq_len, device: ExplodingLayer(ValueError("bad shape\nsecond line")))
    rows = run(tmp_path, impls=["naive"], phases=["infer"])
    assert [r["status"] for r in rows] == ["error: ValueError: bad shape"] * 2  # not skipped: not an OOM


def test_csv_written_after_every_cell(tmp_path: Path) -> None:
    seen: list[int] = []
    out = tmp_path / "attention_cpu.csv"
    config = bench.make_config(**{**TINY, "impls": ["sdpa"], "phases": ["infer"]})
    bench.run_attention_bench(config, out, log=lambda line: seen.append(len(read_csv(out))))
    assert seen == [1, 2]


def test_plots_written_with_oom_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.BUILDERS, "naive",
                        lambda config, seq_len, device: ExplodingLayer(torch.cuda.OutOfMemoryError("out of memory")))
    run(tmp_path, impls=["naive", "sdpa"])
    paths = bench.plot_bench(tmp_path / "attention_cpu.csv", tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(f"attention_cpu_{m}.{s}" for m in ("time", "memory") for s in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "naive OOM" in (tmp_path / "plots" / "attention_cpu_time.svg").read_text()


def test_cli_attention_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.csv"
    assert cli(["bench", "attention", "--quick", "--seq-lens", "16", "--impls", "sdpa", "blossom_triton",
                "--repeats", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [(r["impl"], r["batch_size"], r["dtype"]) for r in rows] == [("sdpa", "2", "fp32"), ("blossom_triton", "2", "fp32")] * 2
    assert cli(["bench", "plot", "--csv", str(out), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "bench_memory.svg").is_file()
    assert "wrote" in capsys.readouterr().out


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(BlossomError, match="unknown impl"):
        bench.make_config(impls=["sdpa", "flash3"])
    with pytest.raises(BlossomError, match="unknown dtype"):
        bench.make_config(dtype="int8")
    with pytest.raises(BlossomError, match="unknown mode"):
        bench.make_config(modes=["graph"])
    with pytest.raises(BlossomError, match="kv_heads"):
        bench.make_config(heads=8, kv_heads=3)
    with pytest.raises(BlossomError, match="unknown backward"):
        bench.make_config(backward="mse")


class LinearLayer(torch.nn.Linear):
    """out = x W^T: its input gradient is known in closed form for either backward."""

    def forward(self, x: torch.Tensor, seq_len: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


@pytest.mark.parametrize("backward", bench.BACKWARDS)
def test_train_step_backpropagates_what_backward_names(backward: str) -> None:
    layer = LinearLayer(8, 8, bias=False)
    x = torch.randn(2, 5, 8, requires_grad=True)
    torch.manual_seed(3)
    step, reset = bench._phase_step(layer, x, torch.full((2,), 5), "train", backward)
    torch.manual_seed(3)
    drawn = torch.randn_like(x)  # what _phase_step drew for the output gradient
    for _ in range(2):  # the same gradient every repetition, nothing accumulated
        reset()
        step()
        out = layer(x).detach()
        want = 2 * out / out.numel() if backward == "loss" else drawn
        torch.testing.assert_close(x.grad, want @ layer.weight.detach(), rtol=1e-5, atol=1e-6)


def test_stis_mask_matches_reference_offsets() -> None:
    from blossom.attention.reference import stis_offsets

    length = 300
    q, kv = torch.arange(length)[:, None], torch.arange(length)[None, :]
    mask = bench.stis_mask_mod(None, None, q, kv)
    for i in (0, 5, 17, 64, 299):
        assert sorted(i - j for j in mask[i].nonzero().flatten().tolist()) == [o for o in stis_offsets(length) if o <= i]


def test_device_slug() -> None:
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench.default_out("cpu") == Path("results/bench/attention_cpu.csv")
