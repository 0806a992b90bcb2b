"""The per-kernel profile: real profiler rows on CPU at toy sizes, failures as statuses, the CLI; on a
GPU (marked gpu) the Triton kernels show up by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blossom import bench, bench_profile
from tests.test_bench import TINY, ExplodingLayer, cli, read_csv


def run(tmp_path: Path, **overrides: object) -> list[dict[str, str]]:
    out = tmp_path / "profile_cpu.csv"
    bench_profile.run_profile(bench.make_config(**{**TINY, "seq_lens": [16], **overrides}), out, log=lambda line: None)
    return read_csv(out)


def cell(rows: list[dict[str, str]], impl: str, phase: str) -> list[dict[str, str]]:
    return [r for r in rows if r["impl"] == impl and r["phase"] == phase]


def test_cpu_rows_are_operators_with_shares(tmp_path: Path) -> None:
    rows = run(tmp_path, impls=["sdpa", "blossom_reference", "blossom_triton"])
    with open(tmp_path / "profile_cpu.csv") as handle:
        assert tuple(handle.readline().strip().split(",")) == bench_profile.COLUMNS
    for impl in ("sdpa", "blossom_reference"):
        for phase in ("train", "infer"):
            members = cell(rows, impl, phase)
            times = [float(r["time_us_per_step"]) for r in members]
            assert len(members) > 3 and all(r["status"] == "ok" and r["device"] == "cpu" for r in members)
            assert {r["backward"] for r in members} == {"output_grad" if phase == "train" else ""}
            assert times == sorted(times, reverse=True) and times[-1] > 0
            assert sum(float(r["share"]) for r in members) == pytest.approx(1.0, abs=5e-3)
            assert float(members[0]["step_total_us"]) == pytest.approx(sum(times), rel=1e-3)
    assert any("scaled_dot_product" in r["kernel"] for r in cell(rows, "sdpa", "infer"))
    assert not any("scaled_dot_product" in r["kernel"] for r in cell(rows, "blossom_reference", "infer"))
    assert any("backward" in r["kernel"] for r in cell(rows, "sdpa", "train"))
    assert not any("backward" in r["kernel"] for r in cell(rows, "sdpa", "infer"))
    assert [r["status"] for r in cell(rows, "blossom_triton", "train") + cell(rows, "blossom_triton", "infer")] == [
        "unavailable: no CUDA"] * 2


def test_failed_cell_is_one_status_row_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.BUILDERS, "naive",
                        lambda config, seq_len, device: ExplodingLayer(torch.cuda.OutOfMemoryError("out of memory")))
    rows = run(tmp_path, impls=["naive", "sdpa"], phases=["infer"])
    assert [r["status"] for r in cell(rows, "naive", "infer")] == ["oom"]
    assert cell(rows, "naive", "infer")[0]["kernel"] == ""
    assert all(r["status"] == "ok" for r in cell(rows, "sdpa", "infer"))


def test_summary_names_the_unit_and_the_top_kernels(tmp_path: Path) -> None:
    rows = run(tmp_path, impls=["sdpa"], phases=["infer"])
    text = bench_profile.summary(rows, top=2)
    lines = text.splitlines()
    assert lines[0].startswith("== sdpa L=16 infer:") and "CPU (no NVIDIA GPU" in lines[0]
    assert len(lines) == 3 and rows[0]["kernel"] in lines[1]


def test_cli_profile_writes_csv_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, text = tmp_path / "p.csv", tmp_path / "p.txt"
    assert cli(["bench", "profile", "--quick", "--seq-lens", "16", "--impls", "sdpa", "--phases", "infer",
                "--repeats", "2", "--warmup", "0", "--device", "cpu", "--out", str(out), "--summary", str(text),
                "--top", "3"]) == 0
    assert {r["impl"] for r in read_csv(out)} == {"sdpa"}
    assert text.read_text().startswith("== sdpa L=16 infer")
    assert "wrote" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_profile_shows_the_triton_kernels(tmp_path: Path) -> None:
    rows = run(tmp_path, impls=["blossom_triton"], device="cuda", dtype="bf16", seq_lens=[256])
    train = {r["kernel"] for r in cell(rows, "blossom_triton", "train")}
    assert {"_select_fwd", "_ltis_fwd", "_ltis_bwd_dkdv", "_bwd_dq", "_stis_bwd_dkdv"} <= train
    assert "_stis_fwd" not in train  # the LTIS forward kernel computes both branches
    assert "_ltis_bwd_prep" not in train  # under the gate the STIS dq kernel writes what it would
    assert rows[0]["device"] != "cpu" and all(float(r["time_us_per_step"]) > 0 for r in rows)
