"""One real RecBole run per record: fields, metrics above random, OOM as a result, fast evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from recbole.utils import init_seed

from blossom import train
from blossom.errors import BlossomError
from blossom.records import read_record
from blossom.trainer import BlossomTrainer
from tests.recbole_fixtures import TINY, bundled_ml100k, recbole_setup

RANDOM_NDCG_UNI100 = 0.045  # NDCG@10 of a random ranking of 1 positive among 101 candidates


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return bundled_ml100k(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_blossomrec_run_writes_a_complete_record(data_dir, tmp_path):
    out = tmp_path / "runs" / "rec.json"
    train.run("ml-100k", "BlossomRec", 20, 2020, {**TINY, "attention_backend": "torch"}, str(data_dir), out, threads=1)
    record = read_record(out)
    assert record["status"] == "ok" and record["error"] is None
    assert record["eval_mode"] == "uni100"
    assert set(record["metrics"]) == {"recall@10", "mrr@10", "ndcg@10"}
    assert record["metrics"]["ndcg@10"] > 2 * RANDOM_NDCG_UNI100
    assert record["time"]["epochs"] == 1 and record["time"]["train_s_per_epoch"] > 0
    assert record["memory"]["rss_peak_mib"] > 0
    assert record["memory"]["nvml_peak_mib"] == "n/a (no NVIDIA GPU)"
    assert record["config"]["MAX_ITEM_LIST_LENGTH"] == 20 and record["config"]["hidden_size"] == 16
    assert record["env"]["recbole"] == "1.2.1"
    assert not list(out.parent.glob("*.tmp")), "atomic write leaves no temp file"


def test_amp_name_trains_under_autocast(data_dir, tmp_path, monkeypatch):
    """-AMP names fix RecBole's enable_amp: the training steps run inside an enabled autocast."""
    seen = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        seen.append(kwargs.get("enabled", True))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    record = train.run("ml-100k", "SASRec-AMP", 20, 2020, TINY, str(data_dir), tmp_path / "amp.json")
    assert record["status"] == "ok" and record["config"]["enable_amp"] is True
    assert seen and all(seen)


def test_both_evaluation_paths_timed(data_dir, tmp_path):
    out = tmp_path / "timed.json"
    record = train.run("ml-100k", "Pop", 20, 2020, TINY, str(data_dir), out, time_both_evals=True)
    assert set(record["eval_time"]) == {"fast_s", "recbole_s"}
    assert record["eval_time"]["fast_s"] == record["time"]["infer_s"]  # the record's own test evaluation
    assert record["eval_time"]["recbole_s"] > 0


def test_oom_becomes_an_oom_record(data_dir, tmp_path, monkeypatch):
    def explode(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(BlossomTrainer, "fit", explode)
    out = tmp_path / "oom.json"
    record = train.run("ml-100k", "SASRec", 20, 2020, TINY, str(data_dir), out)
    assert record["status"] == "oom"
    assert "out of memory" in record["error"]
    assert json.loads(out.read_text())["metrics"] == {}


def test_other_errors_propagate_and_write_nothing(data_dir, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise ValueError("a bug, not a result")

    monkeypatch.setattr(BlossomTrainer, "fit", broken)
    out = tmp_path / "err.json"
    with pytest.raises(ValueError, match="a bug"):
        train.run("ml-100k", "SASRec", 20, 2020, TINY, str(data_dir), out)
    assert not out.exists()


def test_unknown_model_and_missing_data(data_dir, tmp_path):
    with pytest.raises(BlossomError, match="unknown model 'Nope'; valid models: .*SASRec"):
        train.run("ml-100k", "Nope", 20, 2020, TINY, str(data_dir), tmp_path / "x.json")
    with pytest.raises(BlossomError, match="prepared dataset not found"):
        train.run("ml-1m", "SASRec", 20, 2020, TINY, str(tmp_path), tmp_path / "x.json")


@pytest.mark.parametrize("model", ["SASRec", "Pop"])
def test_fast_sampled_eval_equals_recbole(data_dir, model):
    """Encoding each user once gives RecBole's per-row uni100 metrics exactly (for every other
    model, tests/models checks the condition that makes this exact: predict == full_sort_predict)."""
    config, (train_data, _, test_data), model_obj = recbole_setup(model, data_dir, attention_backend="torch")
    fast = BlossomTrainer(config, model_obj, fast_eval=True)
    slow = BlossomTrainer(config, model_obj, fast_eval=False)
    fast._train_epoch(train_data, 0)  # a trained model, so scores are not all ties
    results = []
    for trainer in (fast, slow):
        init_seed(config["seed"], True)  # RecBole draws the 100 negatives anew at every evaluation
        results.append(trainer.evaluate(test_data, load_best_model=False))
    assert results[0] == results[1]


def test_is_oom():
    assert train.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert train.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e12 bytes"))
    assert not train.is_oom(RuntimeError("shape mismatch"))
