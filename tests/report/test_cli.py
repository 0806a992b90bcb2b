"""`blossom report ...` through argparse: the exact interface the Snakemake rules call."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from blossom.errors import BlossomError
from blossom.report.cli import register

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str | Path) -> int:
    """Parse like `blossom` does and call the handler (blossom.cli.main prints BlossomErrors)."""
    parser = argparse.ArgumentParser(prog="blossom")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_table_command_writes_three_files(tmp_path, run_files):
    out = tmp_path / "tables" / "efficiency.md"
    assert run("report", "table", "efficiency", "--runs", *run_files, "--out", out, "--baseline", "GRU4Rec") == 0
    assert "Train mem GRU4Rec/model" in out.read_text()
    assert out.with_suffix(".csv").exists() and out.with_suffix(".tex").exists()
    # the workflow passes --baseline to every table: ablation keeps its own --reference
    run("report", "table", "ablation", "--runs", *run_files, "--out", tmp_path / "ablation.md",
        "--baseline", "SASRec")
    ablation = (tmp_path / "ablation.md").read_text()
    assert ablation.startswith("# Ablation: BlossomRec variants vs BlossomRec") and "| SASRec" not in ablation


def test_compare_and_index_commands(tmp_path, run_files):
    out = tmp_path / "tables" / "comparison.md"
    run("report", "compare", "--runs", *run_files, "--paper", REPO / "paper_tables" / "reported.csv",
        "--out", out, "--tolerance", "0.05")
    assert "<= 0.05" in out.read_text() and out.with_suffix(".csv").exists()
    bench = tmp_path / "bench" / "attention_h100.csv"
    bench.parent.mkdir()
    bench.write_text("impl,seq_len,batch_size,phase,dtype,time_ms,peak_mem_mib,nvml_peak_mib,status,device,torch,triton\n"
                     "sdpa,200,64,train,bf16,3.05,127,500,ok,NVIDIA H100,2.11.0,3.6.0\n"
                     "blossom_triton,4096,64,infer,bf16,1.5,90,400,ok,NVIDIA H100,2.11.0,3.6.0\n")
    run("report", "index", "--out", tmp_path / "index.md", "--tables", out, "--runs", *run_files,
        "--bench", bench)
    index = (tmp_path / "index.md").read_text()
    assert "(tables/comparison.md)" in index
    assert ("- [attention benchmark](bench/attention_h100.csv): blossom_triton, sdpa; L 200-4096; "
            "infer, train; bf16; on NVIDIA H100") in index
    assert "| NVIDIA H100 | 2.11.0  | 3.6.0    | 2      |" in index


@pytest.mark.parametrize("runs", [[], ["missing.json"], ["broken.json"], ["invalid.json"]])
def test_bad_run_records_are_one_line_errors(tmp_path, runs):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "invalid.json").write_text('{"dataset": "ml-1m"}')
    with pytest.raises(BlossomError) as err:
        run("report", "table", "accuracy", "--runs", *[tmp_path / r for r in runs], "--out", tmp_path / "a.md")
    message = str(err.value)
    assert "\n" not in message
    assert ("--runs is empty" in message) if not runs else message.startswith("cannot read run record")


def test_importing_the_cli_stays_light():
    code = "import sys, blossom.report.cli; print(sorted({'pandas', 'matplotlib'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
