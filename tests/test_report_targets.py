"""Issue 4's targets read off benchmark CSVs: ratios within one run, verdicts, OOM cells, modes, CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from blossom import bench, bench_cli
from blossom.errors import BlossomError
from blossom.report import targets
from blossom.report.index import table_entry

COLUMNS = ["impl", "seq_len", "phase", "mode", "status", "time_ms", "peak_mem_mib"]


def write(tmp_path: Path, rows: list[tuple], name: str = "attention_gpu.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def cells(path: Path) -> pd.DataFrame:
    """The targets table's data, indexed by (target label, baseline, mode)."""
    return targets.targets_report(path)[0].data.set_index(["target", "baseline", "mode"])


def label(metric: str, phase: str, seq_len: int | None) -> str:
    return next(t for t in targets.TARGETS if (t.metric, t.phase, t.seq_len) == (metric, phase, seq_len)).label()


def run_rows(impl: str, seq_len: int, phase: str, mode: str, time_ms: float, mem: float, status: str = "ok") -> tuple:
    return impl, seq_len, phase, mode, status, time_ms if status == "ok" else "", mem if status == "ok" else ""


def test_ratios_and_verdicts_come_from_the_same_run(tmp_path: Path) -> None:
    rows = []
    for seq_len, (mine, theirs, mem_mine, mem_theirs) in {512: (0.9, 1.0, 50, 100), 1024: (0.6, 1.0, 90, 100),
                                                         4096: (2.0, 10.0, 80, 100)}.items():
        rows += [run_rows("blossom_triton", seq_len, "train", "eager", mine, mem_mine),
                 run_rows("sdpa", seq_len, "train", "eager", theirs, mem_theirs),
                 run_rows("blossom_triton", seq_len, "infer", "eager", mine / 4, mem_mine),
                 run_rows("sdpa", seq_len, "infer", "eager", theirs / 4, mem_theirs)]
    data = cells(write(tmp_path, rows))
    assert data.loc[(label("time", "train", 512), "sdpa", "eager"), "ratio"] == pytest.approx(0.9)
    assert data.loc[(label("time", "train", 512), "sdpa", "eager"), "met"]
    assert data.loc[(label("time", "train", 1024), "sdpa", "eager"), "ratio"] == pytest.approx(0.6)
    assert not data.loc[(label("time", "train", 1024), "sdpa", "eager"), "met"]  # 0.6 > 0.5
    assert data.loc[(label("time", "train", 4096), "sdpa", "eager"), "met"]  # exactly 0.2 meets <= 0.2
    assert data.loc[(label("time", "infer", 4096), "sdpa", "eager"), "met"]
    memory = data.loc[(label("memory", "train", None), "sdpa", "eager")]
    assert memory["met"] and memory["ratio"] == pytest.approx(0.9) and memory["at"] == 1024  # the worst L
    # no sdpa_flash rows and no cuda_graph rows: no such lines, rather than lines of "no data"
    assert set(data.index.get_level_values("baseline")) == {"sdpa"}
    assert set(data.index.get_level_values("mode")) == {"eager"}


def test_out_of_memory_cells(tmp_path: Path) -> None:
    rows = [run_rows("blossom_triton", 4096, "train", "eager", 0, 0, status="oom"),
            run_rows("sdpa", 4096, "train", "eager", 10.0, 100),
            run_rows("blossom_triton", 8192, "infer", "eager", 3.0, 500),
            run_rows("sdpa", 8192, "infer", "eager", 0, 0, status="oom (skipped after smaller L)"),
            run_rows("blossom_triton", 4096, "infer", "eager", 1.0, 90),
            run_rows("sdpa", 4096, "infer", "eager", 2.0, 100)]
    data = cells(write(tmp_path, rows))
    train = data.loc[(label("time", "train", 4096), "sdpa", "eager")]
    assert train["met"] is False and train["note"] == "blossom_triton oom"
    # the baseline running out of memory is no worse than any ratio: the worst stays L = 4096's 0.9
    memory = data.loc[(label("memory", "infer", None), "sdpa", "eager")]
    assert memory["met"] and memory["ratio"] == pytest.approx(0.9) and memory["at"] == 4096
    train_memory = data.loc[(label("memory", "train", None), "sdpa", "eager")]
    assert train_memory["met"] is False and train_memory["note"] == "blossom_triton oom"


def test_memory_is_judged_on_eager_rows_time_in_both_modes(tmp_path: Path) -> None:
    rows = []
    for mode, mem in (("eager", 80), ("cuda_graph", 160)):  # graph pools hold capture-time allocations
        rows += [run_rows("blossom_triton", 4096, "train", mode, 3.0, mem), run_rows("sdpa", 4096, "train", mode, 10.0, 100)]
    data = cells(write(tmp_path, rows))
    assert data.loc[(label("memory", "train", None), "sdpa", "eager"), "met"]
    assert (label("memory", "train", None), "sdpa", "cuda_graph") not in data.index
    for mode in ("eager", "cuda_graph"):
        assert data.loc[(label("time", "train", 4096), "sdpa", mode), "ratio"] == pytest.approx(0.3)
    ratios = targets.targets_report(tmp_path / "attention_gpu.csv")[1].data.set_index(["L", "phase", "mode"])
    assert ratios.loc[(4096, "train", "cuda_graph"), "memory / sdpa"] == pytest.approx(1.6)


def test_a_cpu_benchmark_says_why_nothing_is_judged(tmp_path: Path) -> None:
    """A real CPU run: the Triton rows are unavailable, so every verdict is "no data" with that
    reason; the pure-torch BlossomRec can be judged instead, with the run's own times."""
    out = tmp_path / "attention_cpu.csv"
    config = bench.make_config(seq_lens=[16], batch_size=2, hidden=32, heads=4, kv_heads=2, dtype="fp32", repeats=2,
                               warmup=1, device="cpu", impls=["blossom_triton", "blossom_reference", "sdpa", "sdpa_flash"])
    bench.run_attention_bench(config, out, log=lambda line: None)
    data = cells(out)
    assert data["met"].isna().all()
    memory = data.loc[(label("memory", "train", None), "sdpa", "eager")]
    assert memory["note"] == "blossom_triton unavailable: no CUDA"
    assert data.loc[(label("time", "train", 512), "sdpa_flash", "eager"), "note"] == "no data"  # no L = 512 rows
    ratios = targets.targets_report(out, impl="blossom_reference")[1].data.set_index(["L", "phase"])
    rows = pd.read_csv(out).set_index(["impl", "phase"])
    for phase in ("train", "infer"):
        expected = rows.loc[("blossom_reference", phase), "time_ms"] / rows.loc[("sdpa_flash", phase), "time_ms"]
        assert ratios.loc[(16, phase), "time / sdpa_flash"] == pytest.approx(expected)
        assert ratios.loc[(16, phase), "memory / sdpa"] == "no memory numbers"  # CPU: no GPU memory


def test_csvs_without_a_mode_column_are_eager_and_other_files_are_refused(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.csv"  # sessions 1-2 wrote no mode column
    legacy.write_text("impl,seq_len,phase,status,time_ms,peak_mem_mib\n"
                      "blossom_triton,512,train,ok,1.0,10\nsdpa,512,train,ok,2.0,20\n")
    assert cells(legacy).loc[(label("time", "train", 512), "sdpa", "eager"), "ratio"] == pytest.approx(0.5)
    other = tmp_path / "runs.csv"
    other.write_text("model,ndcg\nSASRec,0.5\n")
    with pytest.raises(BlossomError, match="not an attention benchmark CSV"):
        targets.targets_report(other)
    with pytest.raises(BlossomError, match="cannot read benchmark"):
        targets.targets_report(tmp_path / "missing.csv")


def test_cli_writes_tables_the_index_can_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write(tmp_path, [run_rows("blossom_triton", 4096, "infer", "eager", 1.0, 80),
                           run_rows("sdpa", 4096, "infer", "eager", 2.0, 100)])
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "targets", "--csv", str(csv), "--out", str(tmp_path / "t" / "targets.md")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| inference time, L = 4096: <= 0.3x | sdpa" in printed and "0.50×" in printed and "not met" in printed
    written = {p.name for p in (tmp_path / "t").iterdir()}
    assert written == {"targets.md", "targets.tex", "targets.csv", "targets_ratios.csv"}
    assert table_entry(tmp_path / "t" / "targets.md", tmp_path) == (
        "- [Attention efficiency targets: blossom_triton](t/targets.md) ([csv](t/targets.csv), [tex](t/targets.tex))")
