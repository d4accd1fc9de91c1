"""Fixtures for the rehearsal scenario's verifier: the clusters, the scenario's work dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest


def ephemeral() -> Path:
    value = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not value:
        pytest.fail("run the tests through Molecule (`molecule verify -s rehearsal`)")
    return Path(value)


@pytest.fixture
def rehearsal_dir() -> Path:
    return ephemeral() / "rehearsal"


@pytest.fixture
def clusters() -> dict[str, dict[str, Any]]:
    return {f.stem: json.loads(f.read_text()) for f in (ephemeral() / "clusters").glob("*.json")}
