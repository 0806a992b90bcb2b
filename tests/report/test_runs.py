"""How record fields are read: model labels from variants, memory source fallback, seed pooling."""

from __future__ import annotations

import math

import pytest
from report_fixtures import NA, make_record

from blossom.report.runs import aggregate, model_label, runs_frame


@pytest.mark.parametrize(("model", "variant", "label"), [
    ("BlossomRec", "official", "BlossomRec"), ("SASRec", None, "SASRec"), ("SASRec", "default", "SASRec"),
    ("BlossomRec", "improved", "BlossomRec-improved"), ("BlossomRec-noLTIS", "noLTIS", "BlossomRec-noLTIS"),
])
def test_model_label(model, variant, label):
    assert model_label(model, variant) == label


def test_memory_source_prefers_nvml_then_torch_then_rss():
    gpu = make_record("ml-1m", "SASRec", 50, nvml=1000)
    torch_only = make_record("ml-1m", "SASRec", 50, nvml=1000)
    torch_only["memory"]["nvml_peak_mib"] = NA
    cpu = make_record("ml-1m", "SASRec", 50, rss=2048)
    frame = runs_frame([gpu, torch_only, cpu])
    assert frame["memory_source"].tolist() == ["NVML", "torch reserved", "RSS"]
    assert frame["memory_mib"].tolist() == [1000, 900, 2048]


def test_aggregate_pools_ok_seeds_and_counts_failures():
    records = [make_record("ml-1m", "SASRec", 50, 1, metrics=(0.4, 0.1, 0.2)),
               make_record("ml-1m", "SASRec", 50, 2, metrics=(0.6, 0.1, 0.2)),
               make_record("ml-1m", "SASRec", 50, 3, status="oom")]
    row = aggregate(runs_frame(records), ["dataset", "model", "max_len"]).iloc[0]
    assert (row["n_ok"], row["n_oom"], row["n_error"]) == (2, 1, 0)
    assert row["recall@10_mean"] == pytest.approx(0.5)
    assert row["recall@10_std"] == pytest.approx(math.sqrt(0.02))  # sample std, ddof 1
