"""Fixtures for the scenario's testinfra tests (run by `molecule verify`).

`db` is a psycopg2 connection to the scenario's throwaway cluster, one per platform,
read from $MOLECULE_EPHEMERAL_DIRECTORY/clusters/<platform>.json (written by
molecule/resources/create.yml; Molecule exports MOLECULE_EPHEMERAL_DIRECTORY to the
verifier). Each test's transaction is rolled back afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest


def cluster_files() -> list[Path]:
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        return []
    return sorted((Path(ephemeral) / "clusters").glob("*.json"))


def load_cluster(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.fixture(params=cluster_files() or [None], ids=lambda p: p.stem if p else "none")
def cluster(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Connection info of one platform's cluster (host, port, user, password, dbname)."""
    if request.param is None:
        pytest.fail(
            "no cluster info in $MOLECULE_EPHEMERAL_DIRECTORY/clusters: run the tests "
            "through Molecule (`molecule verify`, after `molecule create`)."
        )
    return load_cluster(request.param)


@pytest.fixture
def db(cluster: dict[str, Any]) -> Iterator[psycopg2.extensions.connection]:
    """psycopg2 connection to the scenario's database; rolled back and closed after."""
    conn = psycopg2.connect(
        host=cluster["host"],
        port=cluster["port"],
        user=cluster["user"],
        password=cluster["password"],
        dbname=cluster["dbname"],
        connect_timeout=10,
        application_name="molecule-verify",
    )
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()
