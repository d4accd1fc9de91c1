"""Fixtures for the scenario's verifier (`molecule verify`): the fingerprints side_effect.yml
and prepare.yml wrote into $MOLECULE_EPHEMERAL_DIRECTORY/fingerprints, and a connection to the
scenario's database. The comparison helpers come from the project's tests/rollback_helpers.py."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

NAMES = ("pre", "forward1", "rolled_back", "data_rolled_back", "forward2")


def ephemeral() -> Path:
    directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not directory:
        pytest.fail("run the verifier through Molecule (molecule verify -s rollback)")
    return Path(directory)


@pytest.fixture(scope="session")
def fingerprints() -> dict[str, Any]:
    found = {}
    for name in NAMES:
        path = ephemeral() / "fingerprints" / f"{name}.json"
        if not path.is_file():
            pytest.fail(f"{path} is missing: run prepare and side_effect first (molecule test -s rollback)")
        found[name] = json.loads(path.read_text())
    return found


@pytest.fixture
def db() -> Iterator[psycopg2.extensions.connection]:
    info = json.loads(next((ephemeral() / "clusters").glob("*.json")).read_text())
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                            password=info["password"], dbname=info["dbname"], connect_timeout=10,
                            application_name="molecule-verify")
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()
