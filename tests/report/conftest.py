"""Fixtures of the report tests: the records of report_fixtures, in memory and as files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from report_fixtures import fixture_records, write_runs


@pytest.fixture
def records() -> list[dict[str, Any]]:
    return fixture_records()


@pytest.fixture
def run_files(tmp_path: Path, records: list[dict[str, Any]]) -> list[Path]:
    return write_runs(tmp_path / "runs", records)
