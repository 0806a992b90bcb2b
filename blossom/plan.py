"""What the workflow has to run, derived from the config (the Snakefile's only logic lives here).

A run is (dataset, model, max_len, seed); experiments may share runs (the same record serves the
accuracy and the efficiency table), so the training jobs are the union over experiments.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from blossom.records import run_path

RUNS_DIR = Path("results/runs")


class Run(NamedTuple):
    dataset: str
    model: str
    max_len: int
    seed: int

    @property
    def record(self) -> str:
        return str(run_path(RUNS_DIR, self.dataset, self.model, self.max_len, self.seed))


def missing_datasets(config: dict[str, Any]) -> dict[str, str]:
    """Datasets the workflow cannot get, with the reason: not prepared, no local source, and
    downloads disabled. Their runs are left out so the rest of the report can be built."""
    from blossom.data.prepare import prepared_paths
    from blossom.data.registry import get
    from blossom.data.sources import available_locally

    data = config["data"]
    if data.get("download", True):
        return {}
    mirror = data.get("mirror") or os.environ.get("BLOSSOM_DATA_MIRROR")
    missing = {}
    for name in configured_datasets(config):
        inter, _ = prepared_paths(data["dir"], name)
        if not inter.exists() and not available_locally(get(name), Path(data["dir"]), mirror and Path(mirror)):
            missing[name] = f"not prepared, not in the mirror ({mirror}), and data.download is false"
    return missing


def configured_datasets(config: dict[str, Any]) -> list[str]:
    """Every dataset any experiment names, available or not."""
    names = (name for spec in config["experiments"].values() for name in spec["datasets"])
    return list(dict.fromkeys(names))


def experiment_runs(config: dict[str, Any], experiment: str) -> list[Run]:
    """Every run of one experiment on the datasets that can be had, in a stable order."""
    spec = config["experiments"].get(experiment)
    if spec is None:
        return []
    missing = missing_datasets(config)
    available = [name for name in spec["datasets"] if name not in missing]
    product = itertools.product(available, spec["models"], spec["max_lens"], spec["seeds"])
    return [Run(*combo) for combo in product]


def all_runs(config: dict[str, Any]) -> list[Run]:
    """The union of all experiments' runs, without duplicates."""
    seen: dict[Run, None] = {}
    for experiment in config["experiments"]:
        seen.update(dict.fromkeys(experiment_runs(config, experiment)))
    return list(seen)


def records(config: dict[str, Any], experiment: str) -> list[str]:
    """Run-record paths an experiment's tables and plots read."""
    return [run.record for run in experiment_runs(config, experiment)]


def datasets(config: dict[str, Any]) -> list[str]:
    """Every dataset some run will use (the configured ones minus the missing)."""
    return list(dict.fromkeys(run.dataset for run in all_runs(config)))


def model_settings(config: dict[str, Any], model: str) -> str:
    """JSON of the RecBole settings for one model (shared settings < per-model overrides).

    Passed to `blossom train --settings` as a rule parameter, so changing a model's settings
    re-runs exactly that model's jobs (Snakemake's params rerun trigger).
    """
    settings = {**config["recbole"], **config.get("models", {}).get(model, {}), "device": config["run"]["device"]}
    return json.dumps(settings, sort_keys=True)
