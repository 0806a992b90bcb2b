"""Comparison with paper_tables: percent scale, tolerance edges, unknown L, verdicts, claims."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import make_record

from blossom.errors import BlossomError
from blossom.report.compare import compare, read_reported, verdict
from blossom.report.render import render, write_tables

REPO = Path(__file__).resolve().parents[2]
HEADER = "dataset,model,variant,max_len,metric,k,value,scale,eval_mode,source\n"


def _reported(tmp_path: Path, *rows: str) -> pd.DataFrame:
    path = tmp_path / "reported.csv"
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows))
    return read_reported(path)


def _rows(table, **where) -> pd.DataFrame:
    cells = table.cells
    for header, value in where.items():
        cells = cells[cells[header] == value]
    return cells


@pytest.fixture
def beauty(records) -> list[dict]:
    return records + [make_record("amazon-beauty", "BlossomRec", 50, metrics=(0.47, 0.2, 0.3)),
                      make_record("amazon-beauty", "BlossomRec", 200, metrics=(0.50, 0.2, 0.3))]


def test_shipped_reported_table_reads_and_normalises_percent():
    reported = read_reported(REPO / "paper_tables" / "reported.csv")
    beauty = reported[reported["dataset"] == "amazon-beauty"].iloc[0]
    assert (beauty["value"], beauty["scale"], beauty["normalised"]) == ("47.34", "percent", pytest.approx(0.4734))
    assert set(reported["metric"]) == {"ndcg", "recall", "train_memory_reduction", "infer_memory_reduction"}
    assert (REPO / "paper_tables" / "code_defaults.csv").read_text().startswith("param,value,source")


@pytest.mark.parametrize(("local", "expected"), [
    (0.515, "within tolerance"), (0.485, "within tolerance"),  # exactly 3% off: the edge is within
    (0.5151, "above"), (0.4849, "below"), (0.5, "within tolerance"),
])
def test_verdict_tolerance_edges(local, expected):
    assert verdict(local, 0.5, 0.03) == expected


def test_percent_reported_value_compared_as_fraction(tmp_path, beauty):
    table = compare(beauty, read_reported(REPO / "paper_tables" / "reported.csv"))[0]
    rows = _rows(table, Dataset="amazon-beauty")
    assert rows["Reported"].tolist() == ["47.34 % (0.4734)"] * 2
    at50 = rows[rows["Local L"] == "50"].iloc[0]
    assert (at50["Local"], at50["Δ"], at50["Rel. Δ"], at50["Verdict"]) == ("0.4700", "-0.0034", "-0.7%",
                                                                          "within tolerance")
    assert rows[rows["Local L"] == "200"].iloc[0]["Verdict"] == "above"  # 0.50 vs 0.4734: +5.6%


def test_unknown_length_compares_every_local_length_and_says_so(beauty):
    table = compare(beauty, read_reported(REPO / "paper_tables" / "reported.csv"))[0]
    rows = _rows(table, Dataset="ml-1m")
    assert rows["Local L"].tolist() == ["50", "200"]
    assert set(rows["Rep. L"]) == {"unknown (every local L)"}
    assert set(rows["Rep. eval"]) == {"unknown (likely uni100)"} and set(rows["Local eval"]) == {"uni100"}
    assert rows["Verdict"].tolist() == ["below", "below"]  # 0.285 and 0.40 vs 0.6128
    assert _rows(table, Dataset="amazon-video-games")["Verdict"].tolist() == ["no local run"]


def test_known_length_and_eval_mode_filter_local_runs(tmp_path, records):
    reported = _reported(tmp_path,
                         "ml-1m,BlossomRec,official,200,ndcg,10,40.5,percent,uni100,test",
                         "ml-1m,BlossomRec,official,200,ndcg,10,0.40,fraction,full,test",
                         "ml-1m,SASRec,unknown,200,recall,10,0.6,fraction,uni100,test",
                         "ml-1m,BlossomRec,noSTIS,50,mrr,10,0.2,fraction,uni100,test",
                         "ml-1m,BlossomRec,official,50,hit,10,0.7,fraction,uni100,test")
    table = compare(records, reported, tolerance=0.02)[0]
    assert table.cells["Local L"].tolist() == ["200", "", "200", "50", "50"]
    assert table.cells["Verdict"].tolist() == ["within tolerance", "no local run", "local OOM", "below",
                                               "no local value"]
    assert table.cells["Δ"].iloc[0] == "-0.0050"
    assert "0.02" in table.caption
    data = table.data.iloc[0]
    assert data["rel_delta"] == pytest.approx(-0.005 / 0.405) and data["verdict"] == "within tolerance"


def test_malformed_reported_rows_name_their_line(tmp_path):
    with pytest.raises(BlossomError, match="line 3: scale 'percentage'"):
        _reported(tmp_path, "ml-1m,BlossomRec,unknown,unknown,ndcg,10,0.6,fraction,uni100,ok",
                  "ml-1m,BlossomRec,unknown,unknown,ndcg,10,61,percentage,uni100,bad")
    with pytest.raises(BlossomError, match="line 2: accuracy metric needs an integer k"):
        _reported(tmp_path, "ml-1m,BlossomRec,unknown,unknown,ndcg,,0.6,fraction,uni100,bad")
    with pytest.raises(BlossomError, match="lacks columns scale"):
        path = tmp_path / "short.csv"
        path.write_text("dataset,model,variant,max_len,metric,k,value,eval_mode,source\n")
        read_reported(path)
    with pytest.raises(BlossomError, match="cannot read reported table"):
        read_reported(tmp_path / "missing.csv")


def test_efficiency_headline_and_claims(tmp_path, records):
    records = records + [make_record("ml-1m", "SASRec-SDPA", 50, nvml=800, train=6, infer=1)]
    sections = compare(records, read_reported(REPO / "paper_tables" / "reported.csv"))
    efficiency, claims = sections[1], sections[2]
    vs_sasrec = _rows(efficiency, Baseline="SASRec", Dataset="ml-1m", Model="BlossomRec")
    assert vs_sasrec["Train mem baseline/model"].tolist() == ["2.20×", "SASRec OOM"]
    assert _rows(efficiency, Baseline="SASRec-SDPA", L="50", Dataset="ml-1m")["Train mem baseline/model"].tolist() \
        == ["1.60×"]
    assert _rows(efficiency, Baseline="SASRec-SDPA", L="200")["Train mem baseline/model"].tolist() \
        == ["no SASRec-SDPA run"]
    assert set(efficiency.cells["Model"]) == {"BlossomRec"}  # ablation variants are not headline
    train = _rows(claims, Claim="train memory reduction").iloc[0]
    assert (train["Reported"], train["Measured max"]) == ("up to 11×", "2.20×")
    assert train["Where"] == "ml-1m L=50 uni100, BlossomRec vs SASRec on NVIDIA H100 80GB HBM3"
    assert _rows(claims, Claim="infer memory reduction")["Reported"].tolist() == ["up to 7×"]


def test_comparison_without_baselines_or_claims(tmp_path):
    records = [make_record("ml-1m", "BlossomRec", 50)]
    reported = _reported(tmp_path, "ml-1m,BlossomRec,unknown,unknown,ndcg,10,0.3,fraction,uni100,x")
    sections = compare(records, reported)
    assert render(sections[1], "md") == "_No runs matched._"
    assert render(sections[2], "md") == "_No efficiency claim (scale 'ratio') in the reported table._"
    paths = write_tables(tmp_path / "comparison.md", sections)
    assert sorted(p.name for p in paths) == ["comparison.csv", "comparison.md", "comparison.tex",
                                             "comparison_claims.csv", "comparison_efficiency.csv"]
    md = (tmp_path / "comparison.md").read_text()
    assert md.startswith("# Accuracy vs reported") and "## Efficiency claims vs measured" in md
