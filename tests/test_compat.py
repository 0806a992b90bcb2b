"""Each RecBole compatibility shim, checked against the failure it fixes (TOOLING.md section 2)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from blossom import compat


def test_ray_is_stubbed_so_quick_start_imports():
    compat.apply()
    assert "ray.tune" in sys.modules
    from recbole.quick_start import quick_start  # fails with "No module named 'ray'" without the stub

    assert hasattr(quick_start, "run_recbole")


def test_numpy_aliases_for_recbole_config():
    compat.apply()
    assert np.float is np.float64 and np.bool is np.bool_ and np.long is np.int_
    from recbole.config import Config  # Config() calls compatibility_settings, which used np.float_

    config = Config(model="Pop", dataset="ml-100k", config_dict={"use_gpu": False, "state": "ERROR"})
    assert config["model"] == "Pop"


def test_torch_load_reads_pickled_objects(tmp_path):
    """RecBole checkpoints pickle a Config; torch >= 2.6 refuses that unless weights_only=False."""
    compat.apply()
    path = tmp_path / "ckpt.pth"
    torch.save({"config": {"plain": object.__new__(PickledThing)}, "state_dict": {}}, path)
    loaded = torch.load(path)
    assert isinstance(loaded["config"]["plain"], PickledThing)


class PickledThing:
    """A non-tensor object, like RecBole's Config inside a checkpoint."""


def test_fill_nan_writes_back():
    """pandas copy-on-write makes `column.fillna(inplace=True)` a no-op; the shim assigns."""
    compat.apply()
    from recbole.data.dataset import dataset
    from recbole.utils import FeatureType

    frame = pd.DataFrame({"item_id": [1.0, None, 3.0], "price": [2.0, None, 4.0]})
    fake = type("FakeDataset", (), {})()
    fake.feat_name_list = ["item_feat"]
    fake.item_feat = frame
    fake.field2type = {"item_id": FeatureType.TOKEN, "price": FeatureType.FLOAT}
    assert dataset.Dataset._fill_nan is compat._fill_nan
    dataset.Dataset._fill_nan(fake)
    assert fake.item_feat["item_id"].tolist() == [1.0, 0.0, 3.0]
    assert fake.item_feat["price"].tolist() == [2.0, 3.0, 4.0]


def test_apply_is_idempotent():
    compat.apply()
    load = torch.load
    compat.apply()
    assert torch.load is load
