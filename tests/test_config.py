"""Config validation gives one clear line naming the bad key; the plan derives the runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from blossom import plan
from blossom.config import load_config, validate_config
from blossom.errors import BlossomError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "workflow/config").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["experiments"]["main"].__setitem__("max_lens", [0]), r"experiments\.main\.max_lens\[0\]: 0 is less than the minimum of 1"),
        (lambda c: c["run"].__setitem__("device", "tpu"), r"run\.device: 'tpu' is not one of"),
        (lambda c: c["recbole"].__setitem__("epochs", "ten"), r"recbole\.epochs: 'ten' is not of type 'integer'"),
        (lambda c: c.__setitem__("colour", "blue"), r"<top level>: Additional properties are not allowed \('colour'"),
        (lambda c: c["experiments"]["main"]["models"].append("GPT5Rec"), r"unknown model 'GPT5Rec'; valid models: .*BlossomRec.*SASRec"),
        (lambda c: c["experiments"]["main"]["datasets"].append("netflix"), r"unknown dataset 'netflix'; valid datasets: .*ml-1m"),
        (lambda c: c["models"].__setitem__("Nope", {}), r"invalid config at models: unknown model 'Nope'"),
    ],
)
def test_invalid_config_names_key_and_value(mutate, message):
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    with pytest.raises(BlossomError, match=message) as info:
        validate_config(config)
    assert "\n" not in str(info.value)


def test_unreadable_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [unclosed")
    with pytest.raises(BlossomError, match="cannot read config"):
        load_config(bad)


def test_runs_are_the_union_of_experiments():
    config = copy.deepcopy(DEFAULT)
    main = plan.experiment_runs(config, "main")
    assert len(main) == 4 * 2
    assert plan.Run("ml-100k", "BlossomRec", 100, 2020) in main
    union = plan.all_runs(config)
    assert len(union) == len(set(union)) == 8  # efficiency runs are a subset of main here
    assert plan.records(config, "ablation") == []
    assert plan.records(config, "main")[0] == "results/runs/ml-100k/Pop/L50/seed2020.json"


def test_model_settings_overlay():
    config = copy.deepcopy(DEFAULT)
    settings = json.loads(plan.model_settings(config, "BlossomRec"))
    assert settings["kv_heads"] == 1  # model override wins
    assert settings["hidden_size"] == DEFAULT["recbole"]["hidden_size"]
    assert json.loads(plan.model_settings(config, "SASRec"))["n_heads"] == DEFAULT["recbole"]["n_heads"]
