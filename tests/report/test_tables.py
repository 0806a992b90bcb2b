"""Accuracy, efficiency and ablation tables: exact cells, emphasis, ratios, deltas, written files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import CPU, GPU, make_record

from blossom.errors import BlossomError
from blossom.report.render import rank_marks, render, write_tables
from blossom.report.tables import ablation_table, accuracy_table, efficiency_table

MAIN_MODELS = ("SASRec", "BlossomRec", "GRU4Rec")


def _main(records: list[dict]) -> list[dict]:
    return [r for r in records if r["model"] in MAIN_MODELS and r["variant"] == "official"]


def _cell(table, column: str, **where) -> str:
    cells = table.cells
    mask = pd.Series(True, index=cells.index)
    for header, value in where.items():
        mask &= cells[header] == value
    assert mask.sum() == 1, where
    return cells.loc[mask, column].item()


def test_accuracy_cells_pool_seeds_and_mark_best(records):
    table = accuracy_table(_main(records))
    md = render(table, "md")
    row = {"Dataset": "ml-1m", "L": "50"}
    assert _cell(table, "Recall@10", Model="SASRec", **row) == "0.5100 ± 0.0141"
    assert _cell(table, "Runs", Model="SASRec", **row) == "2"
    assert "| **0.5500** " in md and "| <u>0.5100 ± 0.0141</u> " in md  # Recall: Blossom, then SASRec
    assert "| **0.2100 ± 0.0141** " in md and "| <u>0.1900</u> " in md  # MRR: SASRec, then Blossom
    assert "| **0.2850** " in md and "| <u>0.2800 ± 0.0141</u> " in md  # NDCG
    assert "0.4500" in md and "**0.4500" not in md and "<u>0.4500" not in md  # GRU4Rec: third


def test_accuracy_shows_oom_and_labels_eval_mode(records):
    table = accuracy_table(_main(records))
    assert _cell(table, "NDCG@10", Dataset="ml-1m", L="200", Model="SASRec") == "OOM"
    assert _cell(table, "Runs", Dataset="ml-1m", L="200", Model="SASRec") == "0 (+1 OOM)"
    # one successful model at L=200: nothing to rank against, so no emphasis
    assert _cell(table, "NDCG@10", Dataset="ml-1m", L="200", Model="BlossomRec") == "0.4000"
    assert table.marks.loc[table.cells["L"] == "200"].eq("").all().all()
    assert set(table.cells["Eval"]) == {"uni100"}


def test_accuracy_error_cell_and_separate_eval_modes():
    records = [make_record("ml-1m", "SASRec", 50, status="error"),
               make_record("ml-1m", "SASRec", 50, metrics=(0.1, 0.05, 0.07), eval_mode="full"),
               make_record("ml-1m", "BlossomRec", 50, metrics=(0.2, 0.06, 0.08), eval_mode="full")]
    table = accuracy_table(records)
    assert _cell(table, "NDCG@10", Eval="uni100", Model="SASRec") == "error"
    assert _cell(table, "NDCG@10", Eval="full", Model="BlossomRec") == "0.0800"
    assert render(table, "md").count("**") == 6  # best of the full-ranking group only


def test_rank_marks_ties_share_a_mark():
    marks = rank_marks(pd.Series([0.3, 0.30001, 0.2, math.nan]))
    assert marks.tolist() == ["best", "best", "second", ""]


def test_latex_escapes_and_emphasises(records):
    tex = render(accuracy_table(_main(records)), "tex")
    assert r"\textbf{0.2100 $\pm$ 0.0141}" in tex
    assert r"\underline{0.5100 $\pm$ 0.0141}" in tex
    assert r"\begin{tabular}" in tex and "<u>" not in tex and "**" not in tex


def test_efficiency_ratios_against_baseline(records):
    table = efficiency_table(records)
    gpu = {"Device": GPU, "Dataset": "ml-1m"}
    assert _cell(table, "Train peak MiB", Model="SASRec", L="50", **gpu) == "1100 ± 141"
    assert _cell(table, "Train s/epoch", Model="SASRec", L="50", **gpu) == "11 ± 1.414"
    assert _cell(table, "Memory source", Model="BlossomRec", L="50", **gpu) == "NVML"
    assert _cell(table, "Train mem SASRec/model", Model="BlossomRec", L="50", **gpu) == "2.20×"
    assert _cell(table, "Infer peak MiB", Model="BlossomRec", L="50", **gpu) == "125"  # test-evaluation peak
    assert _cell(table, "Infer mem SASRec/model", Model="BlossomRec", L="50", **gpu) == "2.20×"
    assert _cell(table, "Train SASRec/model", Model="BlossomRec", L="50", **gpu) == "2.00×"
    assert _cell(table, "Infer SASRec/model", Model="BlossomRec", L="50", **gpu) == "0.50×"
    assert _cell(table, "Eval RecBole s", Model="BlossomRec", L="50", **gpu) == "4"
    assert _cell(table, "Train mem SASRec/model", Model="SASRec", L="50", **gpu) == "1.00×"
    assert _cell(table, "Train mem SASRec/model", Model="BlossomRec", L="200", **gpu) == "SASRec OOM"
    assert _cell(table, "Train peak MiB", Model="SASRec", L="200", **gpu) == "OOM"
    assert _cell(table, "Train mem SASRec/model", Model="GRU4Rec", L="50", **gpu) == "2.75×"
    blossom = table.data[(table.data["model"] == "BlossomRec") & (table.data["max_len"] == 50)
                         & (table.data["device"] == GPU)]
    assert blossom["memory_mib_ratio"].item() == pytest.approx(2.2)


def test_efficiency_cpu_record_uses_rss(records):
    table = efficiency_table(records)
    cpu = {"Device": CPU, "Dataset": "ml-100k", "L": "50"}
    assert _cell(table, "Memory source", Model="BlossomRec", **cpu) == "RSS"
    assert _cell(table, "Train peak MiB", Model="BlossomRec", **cpu) == "1024"
    assert _cell(table, "Train mem SASRec/model", Model="BlossomRec", **cpu) == "2.00×"


def test_efficiency_memory_ratio_needs_equal_sources_and_baseline_is_configurable():
    records = [make_record("ml-1m", "SASRec", 50, nvml=1000),
               make_record("ml-1m", "BlossomRec", 50, rss=500),  # nvml n/a: RSS
               make_record("ml-1m", "GRU4Rec", 50, nvml=400)]
    table = efficiency_table(records)
    assert _cell(table, "Train mem SASRec/model", Model="BlossomRec") == "n/a"
    assert "Device" not in table.cells.columns  # one device: named in the caption instead
    assert GPU in table.caption
    table = efficiency_table(records, baseline="GRU4Rec")
    assert _cell(table, "Train mem GRU4Rec/model", Model="SASRec") == "0.40×"
    assert _cell(efficiency_table(records, baseline="LinRec"), "Train mem LinRec/model", Model="SASRec") \
        == "no LinRec run"


def test_ablation_deltas_vs_full_blossomrec(records):
    table = ablation_table(records)
    assert set(table.cells["Variant"]) == {"BlossomRec", "BlossomRec-noLTIS", "BlossomRec-noSTIS"}
    row = {"Dataset": "ml-1m", "L": "50"}
    assert _cell(table, "Δ NDCG@10", Variant="BlossomRec-noLTIS", **row) == "-0.0150"
    assert _cell(table, "Δ Recall@10", Variant="BlossomRec-noSTIS", **row) == "-0.0100"  # variant field
    assert _cell(table, "NDCG@10", Variant="BlossomRec-noSTIS", **row) == "0.2800"
    assert _cell(table, "Δ NDCG@10", Variant="BlossomRec", **row) == "+0.0000"
    assert table.data["ndcg@10_delta"].min() == pytest.approx(-0.015)


def test_ablation_without_blossomrec_runs_is_an_error(records):
    with pytest.raises(BlossomError, match="no BlossomRec runs"):
        ablation_table([r for r in records if r["model"] == "SASRec"])


def test_write_tables_writes_md_csv_tex(tmp_path: Path, records):
    paths = write_tables(tmp_path / "tables" / "accuracy.md", [accuracy_table(_main(records))])
    assert sorted(p.name for p in paths) == ["accuracy.csv", "accuracy.md", "accuracy.tex"]
    md = (tmp_path / "tables" / "accuracy.md").read_text()
    assert md.startswith("# Accuracy: ") and "| Dataset" in md
    csv = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    sasrec = csv[(csv["model"] == "SASRec") & (csv["max_len"] == 50) & (csv["dataset"] == "ml-1m")]
    assert sasrec["recall@10_mean"].item() == pytest.approx(0.51)
    assert sasrec["recall@10_std"].item() == pytest.approx(0.0141421356)
    assert not list(tmp_path.glob("tables/.*.tmp"))  # atomic writes leave no temp files
