"""Checks of the database after `molecule converge` (every phase of the migration)."""

from __future__ import annotations

import psycopg2.extensions
import pytest

BASELINE_TABLES = [
    "clients_enhanced",
    "marketplace_modules",
    "module_installations",
    "client_app_overrides",
    "client_deployments",
]


@pytest.mark.parametrize("table", BASELINE_TABLES)
def test_baseline_tables_exist(db: psycopg2.extensions.connection, table: str) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
        assert cur.fetchone()[0], f"table public.{table} is missing"
