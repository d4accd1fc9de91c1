"""Helpers of the after-the-migration tests (brief, watch, review, application checks,
Prometheus; the fixtures are registered in conftest.py): a database migrated once (phases 1 to 6,
as `make demo` does) kept as a template, and a fresh copy of it per test.

    migrated_template (fixture, session)   a database of the test cluster migrated by migrate.yml
    migrated_db       (fixture)           a copy of it (CREATE DATABASE ... TEMPLATE), dropped after
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import clone_database, drop_database, playbook_output, query, run_playbook

__all__ = ["migrated_db_fixture", "migrated_template_fixture", "next_version_processes_events"]


@pytest.fixture(scope="session", name="migrated_template")
def migrated_template_fixture(pg_cluster: dict[str, Any], template_db: str,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = {k: pg_cluster[k] for k in ("host", "port", "user", "password")}
    db = clone_database({**base, "dbname": template_db}, f"migrated_{uuid.uuid4().hex[:10]}")
    out = tmp_path_factory.mktemp("migrated")
    try:
        result = run_playbook("playbooks/migrate.yml", db, {
            "phase": "all", "migration_report_dir": str(out / "reports"),
            "migration_backup_dir": str(out / "backups")})
        assert result.returncode == 0, playbook_output(result)
        db["reports"] = str(out / "reports")
        yield db
    finally:
        drop_database(db)


@pytest.fixture(name="migrated_db")
def migrated_db_fixture(migrated_template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    source = {k: v for k, v in migrated_template.items() if k != "reports"}
    db = clone_database(source, f"test_{uuid.uuid4().hex[:12]}")
    try:
        yield db
    finally:
        drop_database(db)


def next_version_processes_events(db: dict[str, Any]) -> None:
    """What the next version's event processor does (today's application knows nothing of the
    table): every pending integration event processed."""
    query(db, """UPDATE integration_events SET status = 'processed', processed_at = clock_timestamp()
                  WHERE processed_at IS NULL""")
