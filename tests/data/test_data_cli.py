"""`blossom data prepare|stats` through the real entry point (blossom.cli.main)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import blossom.cli


@pytest.fixture
def run(monkeypatch):
    """blossom.cli.main with only the data commands registered (the others load heavy stacks)."""
    monkeypatch.setattr(blossom.cli, "COMMAND_MODULES", ("blossom.data.cli",))
    monkeypatch.delenv("BLOSSOM_DATA_MIRROR", raising=False)
    return blossom.cli.main


def test_unknown_dataset_is_one_line_and_exit_2(run, capsys):
    assert run(["data", "prepare", "ml-20m"]) == 2
    err = capsys.readouterr().err
    assert err == ("blossom data: error: unknown dataset 'ml-20m'; valid: amazon-beauty, "
                   "amazon-video-games, gowalla, ml-100k, ml-1m\n")


def test_prepare_bundled_ml100k_then_up_to_date(run, capsys, tmp_path):
    assert run(["data", "prepare", "ml-100k", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ml-100k: prepared: 943 users, 1,682 items, 100,000 interactions, real timestamps" in out
    assert run(["data", "prepare", "ml-100k", "--data-dir", str(tmp_path)]) == 0
    assert "ml-100k: up to date" in capsys.readouterr().out


def test_mirror_comes_from_the_environment_and_unavailable_exits_2(run, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BLOSSOM_DATA_MIRROR", str(tmp_path / "mirror"))
    # No mirror copy of gowalla here, and its URLs go through a proxy port where nothing listens,
    # so they fail at once even on a machine with internet.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    assert run(["data", "prepare", "gowalla", "--data-dir", str(tmp_path / "data"),
                "--retries", "0", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"mirror {tmp_path / 'mirror' / 'gowalla'} holds none of loc-gowalla_totalCheckins.txt" in err
    assert "https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz: " in err
    assert not (tmp_path / "data").exists()


def test_stats_table_marks_missing_datasets_and_compares_with_the_paper(run, capsys, tmp_path):
    data = tmp_path / "data"
    assert run(["data", "prepare", "ml-100k", "--data-dir", str(data)]) == 0
    paper = tmp_path / "dataset_stats.csv"
    paper.write_text("dataset,users,items,interactions,avg_len,sparsity\nML-100K,943,1682,100000,,\n")
    out = tmp_path / "tables" / "datasets.md"
    assert run(["data", "stats", "--data-dir", str(data), "--datasets", "ml-100k", "gowalla",
                "--out", str(out), "--paper", str(paper)]) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert list(table["status"]) == ["prepared", "missing (not prepared)"]
    assert table.loc[0, "users"] == 943 and pd.isna(table.loc[1, "users"])
    assert table.loc[0, "paper_interactions"] == 100000
    assert "paper_avg_len" not in table.columns  # the paper gives no value for it
    markdown = out.read_text()
    assert "| gowalla   | missing (not prepared) |" in markdown
    assert "100,000" in markdown and "Interactions (paper)" in markdown


def test_stats_with_an_empty_paper_table_has_no_paper_columns(run, tmp_path):
    paper = tmp_path / "dataset_stats.csv"
    paper.write_text("dataset,users,items,interactions,avg_len,sparsity\n")
    out = tmp_path / "datasets.md"
    assert run(["data", "stats", "--data-dir", str(tmp_path), "--datasets", "ml-1m",
                "--out", str(out), "--paper", str(paper)]) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert list(table.columns) == ["dataset", "status", "users", "items", "interactions", "mean_seq_len",
                                   "median_seq_len", "max_seq_len", "sparsity", "timestamps", "source"]


def test_cli_module_imports_no_heavy_library():
    code = "import sys, blossom.data.cli; print(sorted({'pandas', 'torch', 'recbole'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
