"""Fixtures for the fleet scenario's verifier: every cluster, and the scenario's work dir."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest


def ephemeral() -> Path:
    value = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not value:
        pytest.fail("run the tests through Molecule (`molecule verify -s fleet`)")
    return Path(value)


@pytest.fixture
def fleet_dir() -> Path:
    return ephemeral() / "fleet"


@pytest.fixture
def clusters() -> dict[str, dict[str, Any]]:
    files = sorted((ephemeral() / "clusters").glob("*.json"))
    return {f.stem: json.loads(f.read_text()) for f in files}


@pytest.fixture
def dbs(clusters: dict[str, dict[str, Any]]) -> Iterator[dict[str, psycopg2.extensions.connection]]:
    conns = {
        name: psycopg2.connect(
            host=c["host"],
            port=c["port"],
            user=c["user"],
            password=c["password"],
            dbname=c["dbname"],
            connect_timeout=10,
        )
        for name, c in clusters.items()
    }
    try:
        yield conns
    finally:
        for conn in conns.values():
            conn.close()
