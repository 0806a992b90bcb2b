"""Model names the suite accepts, mapped to RecBole model classes plus their default settings.

Built-in RecBole models load RecBole's own yaml defaults; suite models carry a yaml next to their
class (RecBole only looks inside its own package). Variants and ablations are the same class with
a few settings fixed, so one name is one reproducible configuration.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blossom.errors import BlossomError

MODEL_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named model: `module:Class`, its yaml defaults (if ours) and fixed settings."""

    target: str
    defaults: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)

    def load_class(self) -> type:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    def yaml_defaults(self) -> dict[str, Any]:
        """The model's yaml defaults ({} for RecBole built-ins, which RecBole loads itself)."""
        if not self.defaults:
            return {}
        return yaml.safe_load((MODEL_DIR / self.defaults).read_text()) or {}


_RECBOLE_SEQ = "recbole.model.sequential_recommender"
_BLOSSOMREC = "blossom.models.blossomrec:BlossomRec"
# RecBole's mixed precision: fp16 autocast with a gradient scaler on CUDA (bf16 autocast on a CPU)
_AMP = {"enable_amp": True, "enable_scaler": True}

MODELS: dict[str, ModelSpec] = {
    "Pop": ModelSpec("recbole.model.general_recommender.pop:Pop"),
    # full attention
    "SASRec": ModelSpec(f"{_RECBOLE_SEQ}.sasrec:SASRec"),
    "SASRec-SDPA": ModelSpec("blossom.models.sasrec_sdpa:SASRecSDPA", "sasrec_sdpa.yaml"),
    "BERT4Rec": ModelSpec(f"{_RECBOLE_SEQ}.bert4rec:BERT4Rec"),
    # efficient attention
    "LinRec": ModelSpec("blossom.models.linrec:LinRec", "linrec.yaml"),
    "LightSANs": ModelSpec(f"{_RECBOLE_SEQ}.lightsans:LightSANs"),
    # state-space and recurrent
    "Mamba4Rec": ModelSpec("blossom.models.mamba4rec:Mamba4Rec", "mamba4rec.yaml"),
    "GRU4Rec": ModelSpec(f"{_RECBOLE_SEQ}.gru4rec:GRU4Rec"),
    # BlossomRec, its improved variant and the ablations
    "BlossomRec": ModelSpec(_BLOSSOMREC, "blossomrec.yaml"),
    "BlossomRec-improved": ModelSpec(_BLOSSOMREC, "blossomrec.yaml", {"variant": "improved"}),
    "BlossomRec-noLTIS": ModelSpec(_BLOSSOMREC, "blossomrec.yaml", {"branches": "stis"}),
    "BlossomRec-noSTIS": ModelSpec(_BLOSSOMREC, "blossomrec.yaml", {"branches": "ltis"}),
    "BlossomRec-gate0.5": ModelSpec(_BLOSSOMREC, "blossomrec.yaml", {"fixed_gate": 0.5}),
    # the efficiency headline in mixed precision as well (the paper does not say which it measured)
    "SASRec-AMP": ModelSpec(f"{_RECBOLE_SEQ}.sasrec:SASRec", fixed=_AMP),
    "SASRec-SDPA-AMP": ModelSpec("blossom.models.sasrec_sdpa:SASRecSDPA", "sasrec_sdpa.yaml", _AMP),
    "BlossomRec-AMP": ModelSpec(_BLOSSOMREC, "blossomrec.yaml", _AMP),
}


def get_model(name: str) -> ModelSpec:
    """The spec of `name`, or a one-line error listing every valid name."""
    try:
        return MODELS[name]
    except KeyError:
        raise BlossomError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}") from None
