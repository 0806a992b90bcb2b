"""Shared helpers for tests that build real RecBole configs/datasets on the bundled ml-100k."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from blossom import compat

TINY = {
    "learning_rate": 0.001,
    "train_batch_size": 2048,
    "eval_batch_size": 4096,
    "train_neg_sample_args": None,
    "loss_type": "CE",
    "epochs": 1,
    "stopping_step": 15,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100", "group_by": "user"},
    "metrics": ["Recall", "MRR", "NDCG"],
    "topk": [10],
    "valid_metric": "NDCG@10",
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
    "kv_heads": 1,
    "device": "cpu",
}


def bundled_ml100k(data_dir: Path) -> Path:
    """Copy RecBole's bundled ml-100k into data_dir/ml-100k/ (what `blossom data prepare` does)."""
    compat.apply()
    import recbole

    source = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    target = data_dir / "ml-100k" / "ml-100k.inter"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return data_dir


def recbole_setup(model: str, data_dir: Path, max_len: int = 20, **overrides: Any):
    """Config, datasets and model instance exactly as blossom.train builds them."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from blossom.models.registry import get_model
    from blossom.train import recbole_settings

    spec = get_model(model)
    settings = recbole_settings(model, max_len, 2020, {**TINY, **overrides}, str(data_dir))
    config = Config(model=spec.load_class(), dataset="ml-100k", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    return config, (train, valid, test), spec.load_class()(config, train._dataset)
