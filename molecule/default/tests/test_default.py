"""Checks of the database after `molecule converge` (every phase of the migration)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psycopg2.errors
import psycopg2.extensions
import pytest

BASELINE_TABLES = [
    "clients_enhanced",
    "marketplace_modules",
    "module_installations",
    "client_app_overrides",
    "client_deployments",
]
NEW_TABLES = ["orchestration_workflows", "workflow_executions", "handover_packages", "integration_events"]


@pytest.mark.parametrize("table", BASELINE_TABLES)
def test_baseline_tables_exist(db: psycopg2.extensions.connection, table: str) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
        assert cur.fetchone()[0], f"table public.{table} is missing"


def scalar(db: psycopg2.extensions.connection, sql: str, args: tuple = ()) -> object:
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def test_every_phase_is_applied_in_the_ledger(db: psycopg2.extensions.connection) -> None:
    with db.cursor() as cur:
        cur.execute(
            """SELECT DISTINCT ON (phase) phase, direction, status FROM migration_ledger.history
                WHERE phase ~ '^[1-6]$' ORDER BY phase, id DESC""")
        rows = cur.fetchall()
    assert rows == [(str(p), "apply", "succeeded") for p in range(1, 7)]


def test_phase1_backup_archive_is_verified(db: psycopg2.extensions.connection) -> None:
    """Strategy 3.1: backups created and verified (pg_dump archive, sha256, backup tables)."""
    backup = scalar(db, "SELECT details -> 'backup' FROM migration_ledger.history "
                        "WHERE phase = '1' AND status = 'succeeded' ORDER BY id DESC LIMIT 1")
    archive = Path(backup["path"])
    assert archive.is_file() and archive.stat().st_mode & 0o077 == 0
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == backup["sha256"]
    assert int(backup["toc_entries"]) > 0
    for table in ("client_app_overrides", "clients_enhanced"):
        assert scalar(db, f"SELECT count(*) FROM migration_backup_{table}") == \
            backup["row_counts"][table]


def test_phase2_columns_tables_and_valid_indexes(db: psycopg2.extensions.connection) -> None:
    """Strategy 3.2: columns added, tables created, indexes in place and valid."""
    with db.cursor() as cur:
        cur.execute("""SELECT column_name, data_type, column_default FROM information_schema.columns
                        WHERE table_name = 'client_app_overrides'
                          AND column_name IN ('marketplace_module_id', 'installation_id',
                                              'activation_status', 'activation_metadata')
                        ORDER BY column_name""")
        columns = {name: (typ, default) for name, typ, default in cur.fetchall()}
    assert columns["marketplace_module_id"][0] == "uuid"
    assert columns["installation_id"][0] == "uuid"
    assert columns["activation_status"] == ("character varying", "'pending'::character varying")
    assert columns["activation_metadata"][0] == "jsonb"
    for table in NEW_TABLES:
        assert scalar(db, "SELECT to_regclass(%s) IS NOT NULL", (table,)), table
    for index in ("idx_cao_marketplace_module", "idx_cao_installation"):
        assert scalar(db, "SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = %s::regclass",
                      (index,)), index


def test_phase3_linkage_workflows_packages_events(db: psycopg2.extensions.connection) -> None:
    """Strategy 3.3: linkages established; workflows, packages and events populated once."""
    assert scalar(db, """SELECT count(*) FROM client_app_overrides cao
                          WHERE EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name)
                            AND (cao.marketplace_module_id IS NULL
                                 OR cao.activation_status <> CASE WHEN cao.enabled THEN 'active'
                                                                  ELSE 'inactive' END)""") == 0
    assert scalar(db, """SELECT count(*) FROM client_app_overrides cao
                          WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name)
                            AND cao.activation_status <> 'pending'""") == 0
    assert scalar(db, "SELECT count(*) FROM clients_enhanced") == scalar(
        db, "SELECT count(DISTINCT client_id) FROM orchestration_workflows WHERE workflow_type = 'client_onboarding'")
    assert scalar(db, "SELECT count(*) FROM orchestration_workflows") == scalar(
        db, "SELECT count(*) FROM clients_enhanced")
    deployed = scalar(db, "SELECT count(DISTINCT client_id) FROM client_deployments WHERE status = 'deployed'")
    assert scalar(db, "SELECT count(*) FROM handover_packages") == deployed > 0
    recent = scalar(db, "SELECT count(*) FROM module_installations WHERE installed_at >= now() - interval '7 days'")
    assert scalar(db, "SELECT count(*) FROM integration_events WHERE event_type = 'module_installed'") == recent > 0
    assert scalar(db, "SELECT count(DISTINCT correlation_id) FROM integration_events") == recent


def test_phase4_foreign_keys_validated(db: psycopg2.extensions.connection) -> None:
    """Strategy 3.4: both foreign keys present, validated, with the strategy's delete rules."""
    with db.cursor() as cur:
        cur.execute("""SELECT conname, convalidated, confdeltype::text FROM pg_constraint
                        WHERE conrelid = 'client_app_overrides'::regclass AND contype = 'f'
                        ORDER BY conname""")
        assert cur.fetchall() == [("fk_cao_installation", True, "c"),
                                  ("fk_cao_marketplace_module", True, "n")]


def test_phase5_views_rls_policies_grants(db: psycopg2.extensions.connection) -> None:
    """Strategy 3.5: views created, RLS active with the named policies, permissions granted."""
    for view in ("unified_client_dashboard", "module_integration_view", "workflow_progress_view"):
        assert scalar(db, "SELECT relkind::text FROM pg_class WHERE oid = %s::regclass", (view,)) == "v"
    assert scalar(db, """SELECT count(*) FROM pg_class WHERE relrowsecurity
                          AND oid IN ('orchestration_workflows'::regclass, 'handover_packages'::regclass)""") == 2
    assert scalar(db, """SELECT array_agg(policyname::text ORDER BY policyname) FROM pg_policies
                          WHERE tablename IN ('orchestration_workflows', 'handover_packages')""") == [
        "handover_client_isolation", "orchestration_client_isolation"]
    assert scalar(db, "SELECT has_table_privilege('authenticated', 'unified_client_dashboard', 'SELECT')")
    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        assert scalar(db, "SELECT has_table_privilege('authenticated', 'orchestration_workflows', %s)",
                      (privilege,))


def test_phase6_validation_passed(db: psycopg2.extensions.connection) -> None:
    """Strategy 3.6: the validator passed; its JSON report exists and says so."""
    details = scalar(db, "SELECT details FROM migration_ledger.history "
                         "WHERE phase = '6' AND status = 'succeeded' ORDER BY id DESC LIMIT 1")
    assert details["passed"] is True and details["failed"] == []
    report = json.loads(Path(details["report"]).read_text())
    assert report["passed"] is True
    assert any(c["check"].startswith("performance.p95") for c in report["checks"])


def as_client(db: psycopg2.extensions.connection, client_id: str | None) -> psycopg2.extensions.cursor:
    cur = db.cursor()
    claims = json.dumps({"role": "authenticated", "app_metadata": {"client_id": client_id}}) if client_id else ""
    cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
    cur.execute("SET LOCAL ROLE authenticated")
    return cur


def test_two_clients_are_isolated_in_tables_and_views(db: psycopg2.extensions.connection) -> None:
    """An authenticated session sees and writes only its own client's rows, views included."""
    with db.cursor() as cur:
        cur.execute("SELECT client_id::text FROM handover_packages ORDER BY client_id LIMIT 2")
        first, second = (row[0] for row in cur.fetchall())
    for me, other in ((first, second), (second, first)):
        cur = as_client(db, me)
        for relation in ("orchestration_workflows", "handover_packages", "unified_client_dashboard"):
            cur.execute(f"SELECT count(*) FILTER (WHERE client_id = %s), count(*) FILTER (WHERE client_id <> %s) "
                        f"FROM {relation}", (me, me))
            own, foreign = cur.fetchone()
            assert own >= 1 and foreign == 0, (relation, me, own, foreign)
        cur.execute("UPDATE orchestration_workflows SET status = 'completed' WHERE client_id = %s", (other,))
        assert cur.rowcount == 0
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO orchestration_workflows (workflow_name, workflow_type, client_id) "
                        "VALUES ('x', 'custom', %s)", (other,))
        db.rollback()
    cur = as_client(db, None)
    cur.execute("SELECT (SELECT count(*) FROM orchestration_workflows)"
                " + (SELECT count(*) FROM unified_client_dashboard)")
    assert cur.fetchone()[0] == 0
    db.rollback()
