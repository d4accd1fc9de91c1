"""playbooks/rollback.yml: every phase reversible, precisely, proven against snapshots.

The staged database (rollback_helpers.staged, a cluster of its own) carries the application's
own tables, columns, view and function besides the strategy's, and was migrated phase by phase
with a snapshot after each. Tests that change it work on copies; the last test of this module
rolls the staged database itself back phase by phase, migrates it again and rolls everything
back at once: no copy of it may exist then, since a copy would use the role `authenticated` and
(rightly) keep it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    REPO_ROOT,
    copy_repository,
    db_snapshot,
    drop_database,
    play_recap,
    playbook_output,
    query,
    run_playbook,
    run_playbook_at,
    snapshot_diff,
)
from rollback_helpers import (
    MIGRATE,
    ROLLBACK,
    Staged,
    applied,
    assert_consistent,
    fidelity_diff,
    ledger_rows,
    out_dirs_in,
    phase3_content,
)
from wire_proxy import WireProxy

# The event window of the latest phase-3 apply.
WINDOW_SQL = """SELECT details->>'events_since' FROM migration_ledger.history
                 WHERE phase = '3' AND direction = 'apply' AND status = 'succeeded' ORDER BY id DESC LIMIT 1"""
CATALOG_SECTIONS = ("schemas", "relations", "columns", "indexes", "constraints", "views", "policies",
                    "table_grants", "functions", "triggers", "extensions", "roles")


def scalar(db: dict[str, Any], sql: str, args: Any = None) -> Any:
    return query(db, sql, args)[0][0]


def rollback(db: dict[str, Any], phase: Any, tmp_path: Path, **extra: Any) -> Any:
    return run_playbook(ROLLBACK, db, {"phase": phase, **out_dirs_in(tmp_path), **extra})


# The linkage rule's two sets (phase 3's 005), views in the ledger's schema.
RULE_VIEWS = ("migration_ledger.phase3_listings", "migration_ledger.phase3_installed_listings")


def without_sync(catalog: dict[str, Any]) -> dict[str, Any]:
    """A catalog without the transition's sync: its triggers, and the functions and views phase 3
    creates in the ledger's schema (the linkage rule, the event, the sync)."""
    def rule_view(key: str) -> bool:
        return any(key == v or key.startswith((v + ".", v + " ")) for v in RULE_VIEWS)

    return {**catalog,
            **{section: {k: v for k, v in catalog[section].items() if not rule_view(k)}
               for section in ("relations", "columns", "views", "table_grants") if section in catalog},
            # the ledger's own functions (revoke_default_grants) stay with the ledger
            "functions": {k: v for k, v in catalog["functions"].items()
                          if not k.startswith(("migration_ledger.phase3_", "migration_ledger.transition_"))},
            "triggers": {k: v for k, v in catalog["triggers"].items() if ".pgmigrate_transition_" not in k}}


def catalog_only(snapshot: dict[str, Any], positions: bool = True) -> dict[str, Any]:
    """The catalog sections; without column positions when a migration ran again (a column
    dropped and added again gets a new attnum, by design)."""
    out = {k: v for k, v in snapshot.items() if k in CATALOG_SECTIONS}
    if not positions:
        out["columns"] = {k: {f: x for f, x in json.loads(v).items() if f != "position"}
                          for k, v in out["columns"].items()}
    return out


@pytest.fixture
def copy(staged: Staged) -> Any:
    db = staged.clone()
    try:
        yield db
    finally:
        drop_database(db)


# --- phase=data: strategy 5.2, precise ----------------------------------------------------


def test_data_rollback_then_rerun_reproduces_the_first_run(staged: Staged, copy: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """-e phase=data leaves phases 4-6 and the whole schema applied, puts every override back
    exactly as it was before phase 3 and removes what phase 3 inserted; -e phase=3 afterwards
    gives the first run's result again."""
    window = scalar(copy, WINDOW_SQL)
    result = rollback(copy, "data", tmp_path)
    assert result.returncode == 0, playbook_output(result)
    assert applied(copy) == ["1", "2", "4", "5", "6"]
    after = db_snapshot(copy)
    # The schema stays: the catalog is the migrated one, without the transition's sync (phase 3's
    # triggers and functions, docs/transition.md), which goes with phase 3's data.
    assert snapshot_diff(without_sync(catalog_only(staged.snapshots[6])), catalog_only(after)) == []
    # The data is what it was after phase 2, table by table (the ledger aside).
    for table, value in staged.snapshots[2]["data"].items():
        if not table.startswith("migration_ledger."):
            assert after["data"][table] == value, table
    assert scalar(copy, "SELECT count(*) FROM migration_ledger.phase3_inserted") == 0
    assert scalar(copy, "SELECT count(*) FROM migration_ledger.phase3_override_plan") == 0
    text = result.stdout
    assert "data only" in text and "override(s) put back" in text
    assert "applied phases 1, 2, 4, 5, 6" in text

    again = run_playbook(MIGRATE, copy, {"phase": 3, **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert applied(copy) == ["1", "2", "3", "4", "5", "6"]
    # Within the same migration the rerun reuses the event window of the run rolled back.
    assert scalar(copy, WINDOW_SQL) == window
    assert phase3_content(copy) == staged.content
    assert_consistent(copy)


def test_data_rollback_keeps_what_the_application_did(staged: Staged, copy: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """Rows the application created or changed after phase 3 stay as they are; what phase 3
    inserted goes by id, although its workflows are dated with their client's creation time
    (the strategy's created_at rule would have missed every one of them)."""
    phase3_started = scalar(copy, "SELECT started_at FROM migration_ledger.history WHERE phase = '3'")
    migration_workflows = scalar(copy, "SELECT count(*) FROM migration_ledger.phase3_inserted "
                                       "WHERE table_name = 'orchestration_workflows'")
    dated_before = scalar(copy, "SELECT count(*) FROM orchestration_workflows WHERE created_at < %s",
                          (phase3_started,))
    assert migration_workflows > 0 and dated_before == migration_workflows
    # The application, after the migration:
    changed_setting, changed_status = [r[0] for r in query(copy, """
        SELECT id FROM client_app_overrides WHERE activation_status = 'active' ORDER BY id LIMIT 2""")]
    query(copy, """
        INSERT INTO clients_enhanced (id, name, created_at) VALUES (md5('client-new')::uuid, 'Newcomer', now());
        INSERT INTO client_app_overrides (id, client_id, app_name, enabled)
             VALUES (md5('override-new')::uuid, md5('client-new')::uuid, 'app_01', true);
        INSERT INTO orchestration_workflows (id, workflow_name, workflow_type, client_id)
             VALUES (md5('workflow-new')::uuid, 'Client Setup - Newcomer', 'client_onboarding',
                     md5('client-new')::uuid);
        INSERT INTO workflow_executions (workflow_id, step_key)
             SELECT row_id, 'account_setup' FROM migration_ledger.phase3_inserted
              WHERE table_name = 'orchestration_workflows' ORDER BY row_id LIMIT 1;
        INSERT INTO handover_packages (id, client_id, workflow_id, package_name)
             SELECT md5('package-app')::uuid, w.client_id, w.id, 'Made by the application'
               FROM orchestration_workflows w
              WHERE w.id = (SELECT row_id FROM migration_ledger.phase3_inserted
                             WHERE table_name = 'orchestration_workflows' ORDER BY row_id LIMIT 1);
        DELETE FROM integration_events
         WHERE id = (SELECT row_id FROM migration_ledger.phase3_inserted
                      WHERE table_name = 'integration_events' ORDER BY row_id LIMIT 1);
        """)
    query(copy, "UPDATE client_app_overrides SET settings = '{\"theme\": \"app\"}', updated_at = now() "
                "WHERE id = %s", (changed_setting,))
    query(copy, "UPDATE client_app_overrides SET activation_status = 'inactive', updated_at = now() "
                "WHERE id = %s", (changed_status,))
    status_row = query(copy, "SELECT marketplace_module_id, installation_id, activation_status "
                             "FROM client_app_overrides WHERE id = %s", (changed_status,))

    result = rollback(copy, "data", tmp_path)
    assert result.returncode == 0, playbook_output(result)

    # What the application made stays, exactly.
    assert scalar(copy, "SELECT name FROM clients_enhanced WHERE id = md5('client-new')::uuid") == "Newcomer"
    assert query(copy, "SELECT app_name, activation_status FROM client_app_overrides "
                       "WHERE id = md5('override-new')::uuid") == [("app_01", "pending")]
    assert scalar(copy, "SELECT count(*) FROM orchestration_workflows") == 1
    assert scalar(copy, "SELECT workflow_name FROM orchestration_workflows") == "Client Setup - Newcomer"
    assert query(copy, "SELECT package_name, workflow_id FROM handover_packages") == [
        ("Made by the application", None)]
    # A setting changed by the application keeps its value; the linkage goes back.
    assert query(copy, "SELECT settings->>'theme', marketplace_module_id, activation_status "
                       "FROM client_app_overrides WHERE id = %s", (changed_setting,)) == [("app", None, "pending")]
    # An override whose linkage the application changed keeps it whole.
    assert query(copy, "SELECT marketplace_module_id, installation_id, activation_status "
                       "FROM client_app_overrides WHERE id = %s", (changed_status,)) == status_row
    # Every other override is as before phase 3.
    assert scalar(copy, """SELECT count(*) FROM client_app_overrides
                            WHERE id <> %s AND (marketplace_module_id IS NOT NULL OR installation_id IS NOT NULL
                                                OR activation_status <> 'pending')""", (changed_status,)) == 0
    details = scalar(copy, "SELECT details FROM migration_ledger.history WHERE direction = 'rollback'")
    assert details["batches"]["kept"] == 1
    assert details["workflow_executions_deleted"] == 1
    assert details["orchestration_workflows_deleted"] == migration_workflows
    assert details["scope"] == "data"
    assert details["events_since"]
    assert "1 changed by the application since phase 3 kept" in " ".join(result.stdout.split())
    assert_consistent_without_phase3(copy)


def assert_consistent_without_phase3(db: dict[str, Any]) -> None:
    assert applied(db) == ["1", "2", "4", "5", "6"]
    assert scalar(db, "SELECT count(*) FROM migration_ledger.phase3_override_plan") == 0
    assert scalar(db, "SELECT count(*) FROM migration_ledger.phase3_inserted") == 0


# --- roles are cluster-wide --------------------------------------------------------------------


def test_role_another_database_uses_is_kept_and_named(staged: Staged, copy: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """A copy of the migrated database records that its migration created `authenticated`, but
    the staged database uses it too: the full rollback keeps it, says why, and keeps the record;
    everything else is exactly as before the migration."""
    result = rollback(copy, "all", tmp_path)
    assert result.returncode == 0, playbook_output(result)
    text = " ".join(result.stdout.split())
    assert "kept role authenticated" in text or "role authenticated, created by the migration, is still used by" in text
    assert f"database {staged.db['dbname']}" in text
    diff = fidelity_diff(staged.snapshots[0], db_snapshot(copy))
    assert [line.split(":")[0] for line in diff] == ["roles[authenticated]"], diff
    assert query(copy, "SELECT kind, name FROM migration_ledger.created_objects") == [("role", "authenticated")]
    assert applied(copy) == []


# --- Supabase: what existed stays --------------------------------------------------------------


SUPABASE_AUTH = """
CREATE SCHEMA auth;
GRANT USAGE ON SCHEMA auth TO authenticated;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE
    AS $$ SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb $$;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO authenticated;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO authenticated;
"""


def test_supabase_objects_stay(staged: Staged, tmp_path: Path) -> None:
    """Where the role, the auth schema, auth.jwt() and Supabase's default privileges exist before
    phase 5, phase 5 records none of them as created (what default privileges gave its views and
    functions it takes back), and its rollback leaves every one of them, and every grant, exactly
    as it was. (Phase 2 took back what they would have given its tables.)"""
    db = staged.clone(4)
    try:
        assert scalar(db, "SELECT to_regrole('authenticated') IS NOT NULL"), "the staged database created it"
        query(db, SUPABASE_AUTH)
        before = db_snapshot(db)
        result = run_playbook(MIGRATE, db, {"phase": 5, **out_dirs_in(tmp_path)})
        assert result.returncode == 0, playbook_output(result)
        assert query(db, """SELECT kind, name FROM migration_ledger.created_objects
                             WHERE phase = '5' AND (kind IN ('role', 'schema') OR name = 'auth.jwt()')""") == []
        result = rollback(db, 5, tmp_path)
        assert result.returncode == 0, playbook_output(result)
        assert fidelity_diff(before, db_snapshot(db)) == []
        assert applied(db) == ["1", "2", "3", "4"]
    finally:
        drop_database(db)


# --- how long the final transaction holds its locks ------------------------------------------

# The first line of every file a full rollback runs in its transaction.
REVERT_FILES = sorted(p for p in (REPO_ROOT / "migrations/ht036").glob("phase*/revert/**/*.sql")
                      if "batches" not in p.parts)


def test_a_full_rollback_holds_its_locks_for_two_round_trips(copy: dict[str, Any], tmp_path: Path) -> None:
    """-e phase=all through a proxy that records every query: BEGIN and every revert file go in
    one query (where the locks are taken), the six records and COMMIT in the next, whatever the
    number of files - not a round trip per file and per record, each one a wait for every query
    of the application on a table the rollback holds (ACCESS EXCLUSIVE on client_app_overrides
    for phase 2's columns). Each phase's record still carries its own files' notices."""
    with WireProxy(copy["host"], copy["port"]) as proxy:
        result = rollback({**copy, "host": "127.0.0.1", "port": proxy.port}, "all", tmp_path)
        connections = proxy.by_connection()
    assert result.returncode == 0, playbook_output(result)
    assert applied(copy) == []
    firsts = {p.relative_to(REPO_ROOT).as_posix(): p.read_text().splitlines()[0] for p in REVERT_FILES}
    carrying = [(n, i) for n, texts in connections.items() for i, q in enumerate(texts)
                if any(line in q for line in firsts.values())]
    assert len(carrying) == 1, [connections[n][i][:80] for n, i in carrying]
    conn, at = carrying[0]
    script = connections[conn][at]
    assert script.startswith("BEGIN;")
    assert [f for f, line in firsts.items() if line not in script] == []
    after = connections[conn][at + 1:]
    assert after[0].rstrip().endswith("COMMIT"), after[0][:200]
    assert after[0].count("UPDATE migration_ledger.history") == 6
    details = dict(query(copy, """SELECT phase, details FROM migration_ledger.history
                                   WHERE direction = 'rollback' ORDER BY id DESC LIMIT 6"""))
    assert details["4"]["dropped"] == ["fk_cao_installation, fk_cao_marketplace_module"]
    assert "integration_events" in details["2"]["dropped"][0]
    assert "dropped" not in details["3"] and "inserted rows" in details["3"]["done"][0]
    assert len({d["transaction_ms"] for d in details.values()}) == 1


def test_a_revert_file_that_fails_is_named_and_changes_nothing(copy: dict[str, Any], tmp_path: Path) -> None:
    """A revert file failing after its own changes and the files before it (a copy of the
    repository whose phase 4 revert ends in an error): the error names that file, the database
    is as it was (the ledger's records of the attempt aside, marked failed), and the rollback
    with the real files then completes."""
    repo = copy_repository(tmp_path / "repo")
    failing = repo / "migrations/ht036/phase4/revert/010_foreign_keys.sql"
    failing.write_text(failing.read_text() + "\nSELECT 1 / 0;\n")
    before = db_snapshot(copy)
    result = run_playbook_at(repo, ROLLBACK, copy, {"phase": "all", **out_dirs_in(tmp_path)})
    assert result.returncode != 0
    assert "phase4/revert/010_foreign_keys.sql: division by zero" in result.stdout, playbook_output(result)
    after = db_snapshot(copy)
    changed = [k for section in after for k in set(after[section]) | set(before[section])
               if after[section].get(k) != before[section].get(k) and "migration_ledger.history" not in k]
    assert changed == []
    assert query(copy, """SELECT phase, status, error LIKE '%%010_foreign_keys.sql: division by zero%%'
                            FROM migration_ledger.history WHERE direction = 'rollback' ORDER BY phase""") == [
        (p, "failed", True) for p in ("1", "2", "3", "4", "5", "6")]
    again = rollback(copy, "all", tmp_path)
    assert again.returncode == 0, playbook_output(again)
    assert applied(copy) == []


# --- check mode --------------------------------------------------------------------------------


def test_check_mode_changes_nothing(copy: dict[str, Any], tmp_path: Path) -> None:
    """--check names what would be rolled back and changes nothing, the ledger included."""
    before = db_snapshot(copy)
    result = run_playbook(ROLLBACK, copy, {"phase": "all", **out_dirs_in(tmp_path)}, check=True)
    assert result.returncode == 0, playbook_output(result)
    assert "Rolling back phase(s) 6, 5, 4, 3, 2, 1" in result.stdout
    assert "would be rolled back; nothing was changed" in result.stdout
    assert snapshot_diff(before, db_snapshot(copy)) == []


# --- the staged database itself: every phase, then everything at once (keep this test last) -----


def test_every_phase_rolls_back_to_the_state_before_it(staged: Staged, tmp_path: Path) -> None:
    """Rolling back 6, 5, ..., 1 one at a time gives, after each, exactly the snapshot taken
    before that phase was applied (catalog, roles and every table's content by hash; the ledger
    and the backup tables aside). migrate.yml then applies everything again, and a full
    rollback (one transaction) returns the database, the role included, to its pre-migration
    state, again. Rerunning a rollback changes nothing."""
    db = staged.db
    window = scalar(db, WINDOW_SQL)
    for phase in range(6, 0, -1):
        result = rollback(db, phase, tmp_path)
        assert result.returncode == 0, playbook_output(result)
        assert fidelity_diff(staged.snapshots[phase - 1], db_snapshot(db)) == [], f"after rolling back {phase}"
        assert applied(db) == [str(p) for p in range(1, phase)]
    assert scalar(db, "SELECT to_regrole('authenticated') IS NULL")
    assert query(db, "SELECT count(*) FROM migration_ledger.created_objects") == [(0,)]

    again = run_playbook(MIGRATE, db, {"phase": "all", **staged.dirs})
    assert again.returncode == 0, playbook_output(again)
    assert applied(db) == ["1", "2", "3", "4", "5", "6"]
    # A new migration (phase 1 applied again) fixes a new event window.
    assert scalar(db, WINDOW_SQL) > window
    migrated = db_snapshot(db)
    assert snapshot_diff(catalog_only(staged.snapshots[6], False), catalog_only(migrated, False)) == []
    assert phase3_content(db) == staged.content
    assert_consistent(db)

    full = rollback(db, "all", tmp_path)
    assert full.returncode == 0, playbook_output(full)
    assert "in one transaction" in full.stdout
    assert fidelity_diff(staged.snapshots[0], db_snapshot(db)) == []
    assert applied(db) == []
    records = scalar(db, """SELECT json_agg(json_build_object('phase', phase, 'transaction', details->'transaction')
                                            ORDER BY id)
                              FROM migration_ledger.history WHERE direction = 'rollback' AND id > (
                                  SELECT max(id) FROM migration_ledger.history WHERE direction = 'apply')""")
    assert [r["phase"] for r in records] == ["6", "5", "4", "3", "2", "1"]
    assert all(r["transaction"] == ["6", "5", "4", "3", "2", "1"] for r in records), json.dumps(records)
    assert ("6", "rollback", "succeeded") in ledger_rows(db)

    rerun = rollback(db, "all", tmp_path)
    assert rerun.returncode == 0, playbook_output(rerun)
    assert play_recap(rerun.stdout)["changed"] == 0
    assert "Nothing to roll back" in rerun.stdout
