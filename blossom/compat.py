"""Runtime shims that let RecBole 1.2.1 run on numpy 2, torch >= 2.6 and pandas >= 2.2/3.

RecBole is used as a library, never forked; these are the four places where it breaks on current
releases (TOOLING.md section 2). `apply()` is idempotent and must run before importing
`recbole.quick_start` or building a `Config`.
"""

from __future__ import annotations

import functools
import sys
import types

import numpy as np
import torch

NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
}

_applied = False


def stub_ray() -> None:
    """RecBole's quick_start imports `ray.tune` (hyper-tuning only); ray 2.6 has no wheel for py3.12."""
    if "ray" in sys.modules:
        return
    ray = types.ModuleType("ray")
    ray.tune = types.ModuleType("ray.tune")
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = ray.tune


def numpy_aliases() -> None:
    """Restore the aliases numpy 2 removed (np.float, np.bool, ...), still used by RecBole at run time."""
    for name, value in NUMPY_ALIASES.items():
        setattr(np, name, value)


def _fill_nan(self) -> None:
    """RecBole's Dataset._fill_nan without `inplace=True` on a column (a no-op under pandas
    copy-on-write): token fields get 0 ([PAD]), float fields their mean."""
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(lambda x, dt=dtype: np.array([], dtype=dt) if isinstance(x, float) else x)


def _torch_load_full(load):
    """torch >= 2.6 defaults weights_only=True; RecBole checkpoints pickle a Config object."""

    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return load(*args, **kwargs)

    wrapper._blossom_patched = True
    return wrapper


def apply() -> None:
    """Apply every shim once (safe to call repeatedly)."""
    global _applied
    if _applied:
        return
    stub_ray()
    numpy_aliases()
    from recbole.config import configurator
    from recbole.data.dataset import dataset

    configurator.Config.compatibility_settings = lambda self: numpy_aliases()
    dataset.Dataset._fill_nan = _fill_nan
    if not getattr(torch.load, "_blossom_patched", False):
        torch.load = _torch_load_full(torch.load)
    _applied = True
