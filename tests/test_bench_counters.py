"""What bounds each kernel, read off a real Nsight Compute CSV (five kernels of one H100 training step
at L = 1024, trimmed to the metrics read); `bench step` refuses without CUDA; on a GPU (marked gpu) the
marked step runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blossom import bench, bench_counters
from blossom.errors import BlossomError
from tests.test_bench import TINY, cli, read_csv

NCU_CSV = Path(__file__).parent / "fixtures" / "ncu_details_h100.csv"


def bounds(path: Path = NCU_CSV) -> dict[str, dict[str, object]]:
    kernels = bench_counters.kernel_bounds(bench_counters.read_launches(path))
    return {row["kernel"]: row for row in kernels.to_dict("records")}


def test_each_kernel_gets_its_throughputs_and_bound() -> None:
    rows = bounds()
    assert list(rows) == ["_ltis_bwd_dkdv", "_ltis_fwd", "_bwd_dq", next(k for k in rows if k.startswith("nvjet")),
                          "_select_fwd"]  # longest first
    fwd = rows["_ltis_fwd"]
    assert fwd["time_us"] == pytest.approx(129.472)  # 129,472 ns
    assert (fwd["dram_pct"], fwd["l2_pct"], fwd["l1tex_pct"], fwd["sm_pct"]) == pytest.approx((15.29, 37.60, 83.11, 67.63), abs=0.01)
    assert (fwd["registers"], fwd["calls"]) == (72, 1)
    assert fwd["nearest_peak"] == fwd["bound"] == "L1/TEX"
    assert rows["_bwd_dq"]["bound"] == "L2"
    select = rows["_select_fwd"]  # no unit at 60% of its peak: Nsight Compute's latency rule
    assert (select["nearest_peak"], select["bound"]) == ("SM", "latency")
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)


def test_launches_of_one_kernel_are_summed_and_time_weighted(tmp_path: Path) -> None:
    lines = NCU_CSV.read_text().splitlines()
    again = [line.replace('"4","566"', '"99","566"').replace('"Duration","ns","129,472"', '"Duration","us","388.608"')
             .replace('"L2 Cache Throughput","%","37.60"', '"L2 Cache Throughput","%","41.58"')
             for line in lines if line.startswith('"4",')]
    path = tmp_path / "twice.csv"
    path.write_text("\n".join(lines + again) + "\n")
    fwd = bounds(path)["_ltis_fwd"]
    assert fwd["calls"] == 2
    assert fwd["time_us"] == pytest.approx(129.472 + 388.608)  # the second launch's duration in us
    assert fwd["l2_pct"] == pytest.approx((37.60 * 129.472 + 41.58 * 388.608) / (129.472 + 388.608))
    assert fwd["l1tex_pct"] == pytest.approx(83.11, abs=0.01)


def test_csv_without_speed_of_light_or_not_from_ncu_is_refused(tmp_path: Path) -> None:
    occupancy_only = tmp_path / "occupancy.csv"
    occupancy_only.write_text("\n".join(line for line in NCU_CSV.read_text().splitlines()
                                        if "Speed Of Light" not in line) + "\n")
    with pytest.raises(BlossomError, match="--section SpeedOfLight"):
        bench_counters.read_launches(occupancy_only)
    other = tmp_path / "bench.csv"
    other.write_text('"impl","seq_len"\n"sdpa","200"\n')
    with pytest.raises(BlossomError, match="not an ncu details CSV"):
        bench_counters.read_launches(other)
    header_only = tmp_path / "nothing.csv"
    header_only.write_text("\n".join(NCU_CSV.read_text().splitlines()[:3]) + "\n")  # ncu's log lines and the header
    with pytest.raises(BlossomError, match="holds no kernel"):
        bench_counters.read_launches(header_only)
    fortnights = tmp_path / "fortnights.csv"
    fortnights.write_text(NCU_CSV.read_text().replace('"Duration","ns"', '"Duration","fortnight"'))
    with pytest.raises(BlossomError, match="unknown unit"):
        bench_counters.read_launches(fortnights)
    with pytest.raises(BlossomError, match="no such ncu CSV"):
        bench_counters.read_launches(tmp_path / "missing.csv")


def test_counters_command_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["bench", "counters", "--csv", str(NCU_CSV), "--out", str(tmp_path / "bounds"), "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert "_ltis_fwd" in printed and "_select_fwd" not in printed  # --top 2 shows the two longest
    markdown = (tmp_path / "bounds.md").read_text()
    assert "| _ltis_fwd " in markdown and "L1/TEX" in markdown
    assert len(read_csv(tmp_path / "bounds.csv")) == 5  # the CSV keeps every kernel


def test_step_needs_cuda_and_one_cell() -> None:
    with pytest.raises(BlossomError, match="needs a CUDA device"):
        cli(["bench", "step", "--quick", "--device", "cpu", "--seq-len", "16"])
    config = bench.make_config(**{**TINY, "device": "cuda"})  # two lengths, two phases
    with pytest.raises(BlossomError, match="one cell"):
        bench.marked_step(config, torch.device("cuda"))


@pytest.mark.gpu
def test_gpu_marked_step_runs_the_layer() -> None:
    config = bench.make_config(**{**TINY, "seq_lens": [200], "phases": ["train"], "impls": ["blossom_triton"],
                                  "dtype": "bf16", "device": "cuda"})
    torch.cuda.reset_peak_memory_stats()
    bench.marked_step(config, torch.device("cuda"))
    assert torch.cuda.max_memory_allocated() > 0
