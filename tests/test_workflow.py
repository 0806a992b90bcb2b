"""The product end to end: Snakemake runs the whole workflow on a tiny config in a temp dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blossom.records import read_record

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
# rules call `python -m blossom.cli`: the test's interpreter must be the python on PATH
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

TINY = {
    "data": {"dir": "data", "mirror": None, "download": True},
    "experiments": {
        "main": {"datasets": ["ml-100k"], "models": ["SASRec-SDPA"], "max_lens": [20], "seeds": [2020]},
        "efficiency": {"datasets": ["ml-100k"], "models": ["SASRec-SDPA"], "max_lens": [20], "seeds": [2020]},
    },
    "recbole": {
        "epochs": 1, "train_batch_size": 2048, "eval_batch_size": 4096, "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100", "group_by": "user"},
        "metrics": ["Recall", "MRR", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2,
    },
    "models": {},
    "run": {"device": "cpu", "threads": 1, "fast_eval": True},
    "bench": {"tag": "cpu", "seq_lens": [32], "batch_size": 1, "dtype": "fp32", "impls": ["blossom_reference", "sdpa"], "repeats": 1},
    "report": {"baseline": "SASRec-SDPA", "tolerance": 0.03, "paper": str(ROOT / "paper_tables" / "reported.csv")},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(workdir / "tiny.yaml"), "--cores", "2", *args],
        capture_output=True, text=True, timeout=900, env=ENV,
    )


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done


@pytest.mark.slow
def test_workflow_produces_records_tables_plots_index(workflow_run):
    workdir, _ = workflow_run
    record = read_record(workdir / "results/runs/ml-100k/SASRec-SDPA/L20/seed2020.json")
    assert record["status"] == "ok"
    assert record["metrics"]["ndcg@10"] > 0.09  # random ranking of 1 in 101 gives ~0.045
    accuracy = (workdir / "results/tables/accuracy.md").read_text()
    assert "SASRec-SDPA" in accuracy and f"{record['metrics']['ndcg@10']:.4f}" in accuracy
    for table in ("accuracy", "efficiency", "comparison", "datasets"):
        assert (workdir / f"results/tables/{table}.csv").stat().st_size > 0
    for plot in ("memory", "time", "accuracy"):
        png = workdir / f"results/plots/{plot}_vs_length.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (workdir / f"results/plots/{plot}_vs_length.svg").read_text().lstrip().startswith("<?xml")
    index = (workdir / "results/index.md").read_text()
    for link in ("tables/accuracy.md", "tables/efficiency.md", "plots/memory_vs_length.png", "bench/attention_cpu.csv",
                 "bench/attention_cpu_targets.md"):
        assert f"({link})" in index
    assert "No blossom_triton, sdpa_flash rows in it." in (workdir / "results/bench/attention_cpu_targets.md").read_text()
    bench = (workdir / "results/bench/attention_cpu.csv").read_text().splitlines()
    assert bench[0].startswith("impl,seq_len,batch_size,phase,dtype,time_ms,peak_mem_mib,nvml_peak_mib,status,device")
    assert len(bench) == 1 + 2 * 2  # 2 impls x 2 phases


@pytest.mark.slow
def test_rerun_does_nothing_and_an_interrupted_run_resumes_alone(workflow_run):
    workdir, _ = workflow_run
    again = snakemake(workdir, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # as if the workflow was killed during training: that record and everything after it is missing
    for path in ("runs/ml-100k/SASRec-SDPA/L20/seed2020.json", "tables/accuracy.md", "index.md"):
        (workdir / "results" / path).unlink()
    resumed = snakemake(workdir)
    jobs = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert jobs.count("train") == 1 and {"table", "index"} <= set(jobs)
    assert not {"prepare_dataset", "bench_attention", "bench_targets"} & set(jobs), jobs
    assert read_record(workdir / "results/runs/ml-100k/SASRec-SDPA/L20/seed2020.json")["status"] == "ok"


@pytest.mark.slow
def test_single_table_target(workflow_run):
    workdir, _ = workflow_run
    (workdir / "results/tables/efficiency.md").unlink()
    done = snakemake(workdir, "results/tables/efficiency.md")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (workdir / "results/tables/efficiency.md").exists()


def test_invalid_config_stops_with_one_clear_line(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "run": {"device": "tpu"}}))
    done = snakemake(tmp_path, "-n")
    assert done.returncode != 0
    assert "invalid config at run.device: 'tpu' is not one of ['auto', 'cpu', 'cuda']" in done.stdout + done.stderr


def test_lint_and_dry_run_of_the_shipped_configs():
    lint = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    for config in sorted((ROOT / "workflow/config").glob("*.yaml")):
        dry = subprocess.run([*SNAKEMAKE, "-n", "--quiet", "--configfile", str(config)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=ENV)
        assert dry.returncode == 0, dry.stderr[-3000:]


def _planned_jobs(*args: str) -> tuple[dict[str, int], str]:
    """Job counts of a dry run of the paper profile (Snakemake's "Job stats" table)."""
    dry = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(ROOT / "workflow/config/paper.yaml"), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.MULTILINE))
    return {name: int(n) for name, n in counts.items()}, out


def test_paper_profile_plans_every_dataset_and_model_through_slurm(tmp_path):
    site = tmp_path / "site.yaml"  # an empty data folder: the plan must not depend on what this checkout holds
    site.write_text(yaml.safe_dump({"data": {"dir": str(tmp_path / "data")}}))
    counts, out = _planned_jobs("--profile", str(ROOT / "workflow/profiles/slurm"),
                                "--configfile", str(ROOT / "workflow/config/paper.yaml"), str(site))
    # main 4 datasets x 9 models x 2 L = 72; efficiency adds 20 new runs + 3 AMP models x 6 L, ablation 24
    assert counts["train"] == 134 and counts["prepare_dataset"] == 4
    for name in ("ml-1m", "amazon-beauty", "amazon-video-games", "gowalla", "Mamba4Rec", "LinRec", "BlossomRec-noSTIS"):
        assert name in out
    assert "gpu=1" in out and "slurm_partition=gpu" in out


def test_paper_profile_without_downloads_leaves_out_what_the_mirror_lacks(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "ml-1m").mkdir(parents=True)
    (mirror / "ml-1m" / "ratings.dat.gz").write_bytes(b"")  # presence is what planning checks
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"data": {"dir": str(tmp_path / "data"), "mirror": str(mirror), "download": False}}))
    counts, out = _planned_jobs("--configfile", str(ROOT / "workflow/config/paper.yaml"), str(site))
    assert counts["prepare_dataset"] == 1
    assert "dataset gowalla is missing and left out" in out and "dataset amazon-beauty is missing" in out
