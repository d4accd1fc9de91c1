"""Fixtures: one throwaway PostgreSQL cluster per session, a fresh database per test.

    pg_cluster   (session)  connection info of a cluster started by tools/pgcluster.py
    template_db  (session)  name of a database seeded once at scale 50, used as TEMPLATE
    fresh_db     (function) {"host", "port", "user", "password", "dbname"} of a new
                            database copied from the template, dropped after the test

A fresh_db dict can go straight to psycopg2.connect(**fresh_db), to helpers.connect()
or to helpers.run_playbook(), which is re-exported here.

The rollback, interruption and restore tests share a cluster and a staged database of their
own (rb_cluster, staged: see rollback_helpers.py); importing their fixtures here registers
them once, so the session builds them once.
"""

from __future__ import annotations

import secrets
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from after_helpers import migrated_db_fixture, migrated_template_fixture  # noqa: F401 - registered once, here
from helpers import connect, make_cluster_tempdir, pgcluster, run_playbook
from psycopg2 import sql
from rollback_helpers import rb_cluster_fixture, staged_fixture  # noqa: F401 - registered once, here

TEMPLATE_DB = "agency_template"
TEMPLATE_SCALE = 50

__all__ = ["TEMPLATE_DB", "TEMPLATE_SCALE", "run_playbook"]


def _admin(info: dict[str, Any]) -> Any:
    conn = connect({**info, "dbname": "postgres"})
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[dict[str, Any]]:
    """A cluster for the whole session, destroyed at the end (even on failure)."""
    base = make_cluster_tempdir("pytest-pgcluster-")
    datadir = base / "data"
    # A password unlike any other argument, so tests can tell it never reaches argv.
    password = f"pytest-{secrets.token_hex(8)}"
    try:
        yield pgcluster.start_cluster(datadir, password=password)
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_cluster: dict[str, Any]) -> str:
    """Seed the template database once (scale 50) and mark it as a template."""
    pgcluster.seed_database(pg_cluster, TEMPLATE_DB, TEMPLATE_SCALE)
    conn = _admin(pg_cluster)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(sql.Identifier(TEMPLATE_DB)))
    finally:
        conn.close()
    return TEMPLATE_DB


@pytest.fixture
def fresh_db(pg_cluster: dict[str, Any], template_db: str) -> Iterator[dict[str, Any]]:
    """A new database copied from the template; dropped (forcibly) after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = _admin(pg_cluster)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
            )
        yield {
            "host": pg_cluster["host"],
            "port": pg_cluster["port"],
            "user": pg_cluster["user"],
            "password": pg_cluster["password"],
            "dbname": name,
        }
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.close()
