"""Workflow configuration: schema validation with one-line messages, and name checks.

The Snakefile calls `validate_config(config)` at parse time, so a bad key or value stops the
workflow before any job starts, with a message naming the key path and the offending value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from blossom.errors import BlossomError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Raise BlossomError naming the first bad key and value, or an unknown model/dataset."""
    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise BlossomError(f"invalid config at {_key_path(err)}: {err.message}")
    _check_names(config)
    return config


def _check_names(config: dict[str, Any]) -> None:
    from blossom.data.registry import DATASETS
    from blossom.models.registry import MODELS

    for name, experiment in config["experiments"].items():
        for kind, valid in (("models", MODELS), ("datasets", DATASETS)):
            unknown = [n for n in experiment[kind] if n not in valid]
            if unknown:
                raise BlossomError(
                    f"invalid config at experiments.{name}.{kind}: unknown {kind[:-1]} {unknown[0]!r}; "
                    f"valid {kind}: {', '.join(sorted(valid))}"
                )
    unknown_overrides = [m for m in config.get("models", {}) if m not in MODELS]
    if unknown_overrides:
        raise BlossomError(f"invalid config at models: unknown model {unknown_overrides[0]!r}; valid models: {', '.join(sorted(MODELS))}")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a workflow config file."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BlossomError(f"cannot read config {path}: {err}") from None
    return validate_config(config or {})
