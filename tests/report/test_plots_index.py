"""Plots (non-empty PNG + SVG with titles and OOM markers) and the index that links them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from report_fixtures import GPU, fixture_records, make_record

from blossom.errors import BlossomError
from blossom.report import plots
from blossom.report.index import write_index
from blossom.report.render import write_tables
from blossom.report.tables import accuracy_table

PLOT_KINDS = ("memory", "time", "accuracy")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """One results tree for all tests here: plots are the slow part (seconds each)."""
    root = tmp_path_factory.mktemp("results")
    records = fixture_records() + [make_record("ml-1m", "SASRec", 100, nvml=3000),
                                   make_record("ml-1m", "BlossomRec", 100, nvml=1500)]
    for kind in PLOT_KINDS:
        getattr(plots, f"{kind}_plot")(records, root / "plots" / f"{kind}_vs_length.png")
    write_tables(root / "tables" / "accuracy.md", [accuracy_table(records)])
    return root


@pytest.mark.parametrize("kind", PLOT_KINDS)
def test_plot_writes_png_and_svg(results, kind):
    png, svg = (results / "plots" / f"{kind}_vs_length").with_suffix(".png"), \
        (results / "plots" / f"{kind}_vs_length").with_suffix(".svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with Image.open(png) as image:
        assert image.size[0] > 400 and "vs max sequence length" in image.text["Title"]
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "vs max sequence length" in text


def test_panel_titles_name_dataset_and_device(results):
    svg = (results / "plots" / "memory_vs_length.svg").read_text()
    assert f"ml-1m on {GPU}" in svg and "ml-100k on cpu" in svg
    assert "peak memory (MiB)" in svg and "max sequence length L (items)" in svg
    assert "SASRec (NVML)" in svg and "BlossomRec (RSS)" in svg and "OOM (top edge)" in svg


def test_all_failed_runs_still_plot(tmp_path):
    records = [make_record("ml-1m", "SASRec", 200, status="oom"),
               make_record("ml-1m", "BlossomRec", 200, status="error")]
    png, svg = plots.memory_plot(records, tmp_path / "m.png")
    assert png.stat().st_size > 0 and svg.stat().st_size > 0


def test_index_links_tables_plots_and_environment(results):
    out = results / "index.md"
    tables = [results / "tables" / "accuracy.md"]
    pngs = [results / "plots" / f"{kind}_vs_length.png" for kind in PLOT_KINDS]
    write_index(out, tables, pngs, fixture_records())
    text = out.read_text()
    assert ("- [Accuracy: test metrics per dataset, max length, eval mode and model](tables/accuracy.md) "
            "([csv](tables/accuracy.csv), [tex](tables/accuracy.tex))") in text
    assert ("- [Peak memory vs max sequence length](plots/memory_vs_length.png) "
            "([svg](plots/memory_vs_length.svg)): peak memory (MiB) per model against L, log-log") in text
    assert "(plots/time_vs_length.png)" in text and "(plots/accuracy_vs_length.png)" in text
    assert f"| {GPU} | 2.11.0  " in text and "| cpu " in text  # env rows with their run counts
    gpu_row = next(line for line in text.splitlines() if line.startswith(f"| {GPU}"))
    assert gpu_row.rstrip(" |").endswith("8")


def test_index_without_records_and_missing_table(results, tmp_path):
    out = tmp_path / "deeper" / "index.md"
    write_index(out, [results / "tables" / "accuracy.md"], [])
    text = out.read_text()
    assert "../" in text and "_none_" in text and "pass --runs" in text
    with pytest.raises(BlossomError, match="cannot read table"):
        write_index(out, [tmp_path / "nope.md"], [])
