"""Every registry model built once, on one real RecBole dataset (bundled ml-100k, tiny settings).

Data preparation is the slow part (~2 s), so it runs once, for SASRec; every other model gets its own
RecBole Config (model yaml < TINY < fixed settings, exactly as blossom.train builds it) and the same
prepared dataset. The batch transform RecBole's dataloader would apply (BERT4Rec's item masking) is
built from each model's config, as the dataloader does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.data.transform import construct_transform
from recbole.utils import init_seed

from blossom.models.registry import get_model
from blossom.train import recbole_settings
from tests.recbole_fixtures import TINY, bundled_ml100k, recbole_setup

MAX_LEN = 40  # >= 32, so BlossomRec has two blocks and a query that sees a past one
SETTINGS = {**TINY, "attention_backend": "torch"}
BATCH = 16


@dataclass
class Built:
    """One model with what its tests need: config, a training batch (transformed) and an eval batch."""

    name: str
    config: Any
    model: torch.nn.Module
    train_batch: Interaction
    eval_batch: Interaction


@pytest.fixture(scope="session")
def recbole_data(tmp_path_factory):
    """(data_dir, train dataloader, first training batch) of the shared SASRec preparation."""
    data_dir = bundled_ml100k(tmp_path_factory.mktemp("data"))
    _, (train, _, _), _ = recbole_setup("SASRec", data_dir, MAX_LEN, **SETTINGS)
    batch = next(iter(train))
    longest = torch.argsort(batch["item_length"], descending=True, stable=True)
    rows = torch.cat([longest[: BATCH // 2], longest[-BATCH // 2 :]])  # full and short histories
    return data_dir, train, batch[rows]


def build(recbole_data, name: str, **overrides: Any) -> Built:
    """Model `name` (with setting overrides) on the shared dataset, seeded like blossom.train."""
    data_dir, train, batch = recbole_data
    settings = recbole_settings(name, MAX_LEN, 2020, {**SETTINGS, **overrides}, str(data_dir))
    cls = get_model(name).load_class()
    config = Config(model=cls, dataset="ml-100k", config_dict=settings)
    transform = construct_transform(config)  # also names BERT4Rec's mask fields in config
    init_seed(config["seed"], config["reproducibility"])
    model = cls(config, train._dataset)
    candidates = torch.randint(1, train._dataset.item_num, (len(batch),), generator=torch.Generator().manual_seed(0))
    eval_batch = Interaction({**{k: batch[k] for k in batch.interaction}, config["ITEM_ID_FIELD"]: candidates})
    return Built(name, config, model, transform(train._dataset, batch), eval_batch)


@pytest.fixture(scope="session")
def built_models(recbole_data) -> dict[str, Built]:
    """Lazily built registry models, one instance per name for the whole session."""

    class Cache(dict):
        def __missing__(self, name: str) -> Built:
            self[name] = build(recbole_data, name)
            return self[name]

    return Cache()
