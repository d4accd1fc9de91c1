"""Phase semantics of playbooks/migrate.yml (and cleanup.yml) against the strategy
(/work/shared/spec/migration-strategy.md), on the real test cluster.

One database is migrated with -e phase=all once for the module (`migrated`); tests that only
read share it, tests that change it work on a copy (`migrated_copy`, CREATE DATABASE ...
TEMPLATE), and the lock and extra-column tests start from fresh_db.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from helpers import (
    clone_database,
    connect,
    db_snapshot,
    drop_database,
    play_recap,
    playbook_output,
    query,
    run_playbook,
    snapshot_diff,
    start_playbook,
)

MIGRATE = "playbooks/migrate.yml"
CLEANUP = "playbooks/cleanup.yml"
DUP_ANALYTICS = "md5('module-dup-analytics')::uuid"
BACKUP_TABLES = ("migration_backup_client_app_overrides", "migration_backup_clients_enhanced")


@dataclass
class Migrated:
    """A database migrated with -e phase=all, and that run."""

    db: dict[str, Any]
    result: subprocess.CompletedProcess[str]
    out_dirs: dict[str, str]


def out_dirs_in(directory: Path) -> dict[str, str]:
    """Extra vars sending backups and reports to `directory`, not into the repository."""
    return {
        "migration_backup_dir": str(directory / "backups"),
        "migration_report_dir": str(directory / "reports"),
    }


def scalar(db: dict[str, Any], sql: str, args: Any = None) -> Any:
    return query(db, sql, args)[0][0]


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def mark_not_applied(db: dict[str, Any], phases: list[str]) -> None:
    """Make the ledger say these phases are not applied (their records failed)."""
    query(
        db,
        "UPDATE migration_ledger.history SET status = 'failed' WHERE phase = ANY(%s)",
        (phases,),
    )


@pytest.fixture(scope="module")
def migrated(
    pg_cluster: dict[str, Any], template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Migrated]:
    """A copy of the template migrated once with -e phase=all (-vvv, to expose any secret)."""
    db = clone_database({**pg_cluster, "dbname": template_db}, f"test_migrated_{uuid.uuid4().hex[:8]}")
    try:
        dirs = out_dirs_in(tmp_path_factory.mktemp("migrated"))
        result = run_playbook(MIGRATE, db, {"phase": "all", **dirs}, extra_args=["-vvv"])
        assert result.returncode == 0, playbook_output(result)
        yield Migrated(db=db, result=result, out_dirs=dirs)
    finally:
        drop_database(db)


@pytest.fixture
def migrated_copy(migrated: Migrated) -> Iterator[dict[str, Any]]:
    """A private copy of the migrated database, for tests that change it."""
    db = clone_database(migrated.db, f"test_copy_{uuid.uuid4().hex[:8]}")
    try:
        yield db
    finally:
        drop_database(db)


# --- idempotence ----------------------------------------------------------------------------


def test_second_run_changes_nothing(migrated: Migrated) -> None:
    """A second -e phase=all reports changed=0 and leaves catalog and data untouched."""
    before = db_snapshot(migrated.db)
    again = run_playbook(MIGRATE, migrated.db, {"phase": "all", **migrated.out_dirs})
    assert again.returncode == 0, playbook_output(again)
    recap = play_recap(again.stdout)
    assert recap["changed"] == 0, playbook_output(again)
    assert recap["failed"] == 0
    assert snapshot_diff(before, db_snapshot(migrated.db)) == []


# --- phase 3: linkage ------------------------------------------------------------------------


def test_activation_status_follows_enabled_or_stays_pending(migrated: Migrated) -> None:
    """Linked overrides are 'active'/'inactive' from enabled; unknown app names stay 'pending'."""
    rows = query(
        migrated.db,
        """SELECT count(*) FILTER (WHERE marketplace_module_id IS NOT NULL AND enabled
                                     AND activation_status = 'active'),
                  count(*) FILTER (WHERE marketplace_module_id IS NOT NULL AND NOT enabled
                                     AND activation_status = 'inactive'),
                  count(*) FILTER (WHERE marketplace_module_id IS NOT NULL
                                     AND activation_status <> CASE WHEN enabled THEN 'active'
                                                                   ELSE 'inactive' END),
                  count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules mm
                                                      WHERE mm.name = cao.app_name)),
                  count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules mm
                                                      WHERE mm.name = cao.app_name)
                                     AND (activation_status <> 'pending'
                                          OR marketplace_module_id IS NOT NULL)),
                  count(*) FILTER (WHERE marketplace_module_id IS NULL AND EXISTS (
                                     SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name))
             FROM client_app_overrides cao""",
    )
    active, inactive, wrong_status, unknown, unknown_touched, known_unlinked = rows[0]
    assert active > 0 and inactive > 0 and unknown > 0
    assert wrong_status == 0
    assert unknown_touched == 0
    assert known_unlinked == 0


def test_linked_module_is_named_like_the_app(migrated: Migrated) -> None:
    """Every linked module carries the override's app_name; installations are the client's own."""
    rows = query(
        migrated.db,
        """SELECT count(*),
                  count(*) FILTER (WHERE mm.name <> cao.app_name),
                  count(cao.installation_id),
                  count(*) FILTER (WHERE cao.installation_id IS DISTINCT FROM (
                      SELECT mi.id FROM module_installations mi
                       WHERE mi.module_id = cao.marketplace_module_id AND mi.tenant_id = cao.client_id
                       ORDER BY mi.installed_at DESC, mi.id LIMIT 1))
             FROM client_app_overrides cao
             JOIN marketplace_modules mm ON mm.id = cao.marketplace_module_id""",
    )
    linked, misnamed, with_installation, wrong_installation = rows[0]
    assert linked > 0 and with_installation > 0
    assert misnamed == 0
    assert wrong_installation == 0


def test_duplicate_module_name_resolution(migrated: Migrated) -> None:
    """'analytics' (listed twice): installers of the duplicate get it, others the oldest listing."""
    rows = query(
        migrated.db,
        f"""SELECT cao.marketplace_module_id,
                  EXISTS (SELECT 1 FROM module_installations mi
                           WHERE mi.tenant_id = cao.client_id AND mi.module_id = {DUP_ANALYTICS})
             FROM client_app_overrides cao WHERE cao.app_name = 'analytics'""",
    )
    dup = scalar(migrated.db, f"SELECT {DUP_ANALYTICS}")
    oldest = scalar(
        migrated.db,
        "SELECT id FROM marketplace_modules WHERE name = 'analytics' ORDER BY created_at, id LIMIT 1",
    )
    assert dup != oldest
    installers = [module for module, installed in rows if installed]
    others = [module for module, installed in rows if not installed]
    assert installers and others, "the seed must exercise both rules"
    assert set(installers) == {dup}
    assert set(others) == {oldest}


def test_output_reports_the_ambiguous_count(migrated: Migrated) -> None:
    """The run says how many overrides named a module listed more than once."""
    ambiguous = scalar(
        migrated.db,
        """SELECT count(*) FROM client_app_overrides
            WHERE app_name IN (SELECT name FROM marketplace_modules GROUP BY name HAVING count(*) > 1)""",
    )
    assert ambiguous > 0
    text = " ".join(migrated.result.stdout.split())
    assert re.search(rf"\b{ambiguous} name a module listed more than once", text), text[-4000:]


# --- phase 3: workflows, handover packages, events -----------------------------------------------


def test_one_onboarding_workflow_per_client(migrated: Migrated) -> None:
    """Each client has exactly one workflow 'Client Setup - <name>' dated like the client."""
    rows = query(
        migrated.db,
        """SELECT (SELECT count(*) FROM clients_enhanced),
                  (SELECT count(*) FROM orchestration_workflows),
                  (SELECT count(*) FROM clients_enhanced c
                    WHERE (SELECT count(*) FROM orchestration_workflows w WHERE w.client_id = c.id) <> 1),
                  (SELECT count(*) FROM orchestration_workflows w JOIN clients_enhanced c ON c.id = w.client_id
                    WHERE w.workflow_name <> 'Client Setup - ' || c.name OR w.created_at <> c.created_at)""",
    )
    clients, workflows, not_one, mismatched = rows[0]
    assert clients > 0
    assert workflows == clients
    assert not_one == 0
    assert mismatched == 0


def test_handover_packages_only_for_deployed_clients(migrated: Migrated) -> None:
    """One package per client with a 'deployed' deployment, none for the others."""
    rows = query(
        migrated.db,
        """SELECT count(*) FILTER (WHERE deployed),
                  count(*) FILTER (WHERE NOT deployed),
                  count(*) FILTER (WHERE deployed AND packages <> 1),
                  count(*) FILTER (WHERE NOT deployed AND packages <> 0)
             FROM (SELECT EXISTS (SELECT 1 FROM client_deployments d
                                   WHERE d.client_id = c.id AND d.status = 'deployed') AS deployed,
                          (SELECT count(*) FROM handover_packages hp WHERE hp.client_id = c.id) AS packages
                     FROM clients_enhanced c) s""",
    )
    deployed, undeployed, deployed_wrong, undeployed_wrong = rows[0]
    assert deployed > 0 and undeployed > 0
    assert deployed_wrong == 0
    assert undeployed_wrong == 0
    assert scalar(migrated.db, "SELECT count(*) FROM handover_packages") == deployed


def test_one_event_per_recent_installation(migrated: Migrated) -> None:
    """One module_installed event per installation of the last 7 days, none for older ones."""
    rows = query(
        migrated.db,
        """SELECT count(*) FILTER (WHERE recent),
                  count(*) FILTER (WHERE NOT recent),
                  count(*) FILTER (WHERE recent AND events <> 1),
                  count(*) FILTER (WHERE NOT recent AND events <> 0)
             FROM (SELECT mi.installed_at >= now() - interval '7 days' AS recent,
                          (SELECT count(*) FROM integration_events e
                            WHERE e.correlation_id = mi.id AND e.event_type = 'module_installed') AS events
                     FROM module_installations mi) s""",
    )
    recent, older, recent_wrong, older_wrong = rows[0]
    assert recent > 0 and older > 0
    assert recent_wrong == 0
    assert older_wrong == 0
    assert scalar(migrated.db, "SELECT count(*) FROM integration_events") == recent


def test_events_go_in_batches_after_a_vacuum_recorded_the_new_tables_empty(
        fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """A VACUUM ANALYZE between phase 2 and phase 3 (a nightly job, an operator) records the new
    tables as empty. Phase 3's events then still go in short batches under the throttle, as the
    workflows and packages do, the guard a probe of the installation's key: as one statement,
    the guard was planned once against an empty integration_events, a nested loop that scanned
    the table per installation while filling it (290,000 events not in after 12 minutes)."""
    dirs = {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}
    for phase in (1, 2):
        result = run_playbook(MIGRATE, fresh_db, {"phase": phase, **dirs})
        assert result.returncode == 0, playbook_output(result)
    conn = connect(fresh_db)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE integration_events, orchestration_workflows, handover_packages")
    finally:
        conn.close()
    assert query(fresh_db, "SELECT reltuples FROM pg_class WHERE relname = 'integration_events'")[0][0] == 0
    installations, recent = query(fresh_db, """
        SELECT count(*), count(*) FILTER (WHERE installed_at >= now() - interval '7 days')
          FROM module_installations""")[0]
    assert installations > 100 and recent > 0, (installations, recent)  # more than the smallest batch

    result = run_playbook(MIGRATE, fresh_db, {"phase": 3, **dirs, "phase3_data_insert_batch_size": 100})
    assert result.returncode == 0, playbook_output(result)
    details = query(fresh_db, """SELECT details FROM migration_ledger.history
                                  WHERE phase = '3' AND direction = 'apply' ORDER BY id DESC LIMIT 1""")[0][0]
    # The first batch takes 100 installations (the smallest batch), the next ones more.
    assert int(details["insert_batches"]["integration_events"]) >= 2, details
    assert int(details["insert_batches"]["workflows"]) >= 1, details
    assert len(details["throttle"]["inserts"]["files"]) == 3, details["throttle"]["inserts"]
    assert int(details["integration_events_created"]) == recent
    wrong = query(fresh_db, """SELECT count(*) FROM module_installations mi
                                WHERE mi.installed_at >= now() - interval '7 days'
                                  AND (SELECT count(*) FROM integration_events e
                                        WHERE e.correlation_id = mi.id
                                          AND e.event_type = 'module_installed') <> 1""")[0][0]
    assert wrong == 0
    recorded = query(fresh_db, "SELECT count(*) FROM migration_ledger.phase3_inserted "
                               "WHERE table_name = 'integration_events'")[0][0]
    assert recorded == recent


def test_rerun_of_phase3_inserts_nothing_twice(migrated_copy: dict[str, Any], tmp_path: Path) -> None:
    """Phase 3 run again (ledger says not applied) adds no workflow, package, event or link."""
    mark_not_applied(migrated_copy, ["3", "4", "5", "6"])
    before = db_snapshot(migrated_copy)
    result = run_playbook(MIGRATE, migrated_copy, {"phase": 3, **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    after = db_snapshot(migrated_copy)
    assert after["data"]["migration_ledger.history"][0] == before["data"]["migration_ledger.history"][0] + 1
    changed = [line for line in snapshot_diff(before, after) if "migration_ledger.history" not in line]
    assert changed == [], "a rerun of phase 3 changed something besides the ledger's history"
    for table in ("orchestration_workflows", "handover_packages", "integration_events"):
        assert after["data"][f"public.{table}"][0] > 0


# --- a database with more than the strategy names ----------------------------------------------

BASELINE_TABLES = (
    "clients_enhanced",
    "marketplace_modules",
    "module_installations",
    "client_app_overrides",
    "client_deployments",
)


def extra_state(db: dict[str, Any]) -> dict[str, Any]:
    """Hashes of the extra columns (with their row ids) and of the unrelated table."""
    state: dict[str, Any] = {}
    for table in BASELINE_TABLES:
        state[table] = query(
            db,
            f"""SELECT count(*), md5(string_agg(id::text || '=' || legacy_ref || '/' || legacy_flag::text,
                                                 '|' ORDER BY id))
                  FROM {table}""",
        )[0]
    state["unrelated"] = query(
        db, "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM agency_notes t"
    )[0]
    return state


def test_extra_columns_and_tables_survive(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """Columns and tables the strategy does not name keep their definition and their data."""
    for table in BASELINE_TABLES:
        query(
            fresh_db,
            f"""ALTER TABLE {table} ADD COLUMN legacy_ref text NOT NULL DEFAULT 'none',
                                   ADD COLUMN legacy_flag boolean;
                UPDATE {table} SET legacy_ref = 'ref-' || md5(id::text), legacy_flag = (random() < 0.5)""",
        )
    query(
        fresh_db,
        """CREATE TABLE agency_notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                      client_id uuid, body text NOT NULL, created_at timestamptz DEFAULT now());
           CREATE INDEX agency_notes_client ON agency_notes (client_id);
           INSERT INTO agency_notes (client_id, body) SELECT id, 'note about ' || name FROM clients_enhanced""",
    )
    before_state = extra_state(fresh_db)
    before = db_snapshot(fresh_db)

    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)

    after = db_snapshot(fresh_db)
    assert extra_state(fresh_db) == before_state
    assert before_state["unrelated"][0] > 0
    for section in ("columns", "indexes", "constraints", "relations"):
        mine = {k: v for k, v in before[section].items() if "legacy_" in k or "agency_notes" in k}
        assert mine, section
        assert {k: after[section].get(k) for k in mine} == mine, section
    assert after["data"]["public.agency_notes"] == before["data"]["public.agency_notes"]


# --- phase 1: backups ----------------------------------------------------------------------------


def test_backup_archive_and_tables(migrated: Migrated) -> None:
    """The pg_dump archive in the ledger exists, matches its sha256, is 0600, has a manifest;
    the backup tables hold the rows of their source tables."""
    backup = scalar(
        migrated.db,
        """SELECT details -> 'backup' FROM migration_ledger.history
            WHERE phase = '1' AND status = 'succeeded' ORDER BY id DESC LIMIT 1""",
    )
    archive = Path(backup["path"])
    assert archive.is_file()
    assert archive.is_relative_to(migrated.out_dirs["migration_backup_dir"])
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == backup["sha256"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    manifest = Path(f"{archive}.manifest.json")
    assert manifest.is_file()
    assert json.loads(manifest.read_text())["sha256"] == backup["sha256"]
    listing = subprocess.run(["pg_restore", "--list", str(archive)], capture_output=True, text=True, check=True)
    assert "TABLE DATA public client_app_overrides" in listing.stdout

    for source in ("client_app_overrides", "clients_enhanced"):
        copied, missing = query(
            migrated.db,
            f"""SELECT (SELECT count(*) FROM migration_backup_{source}),
                       (SELECT count(*) FROM (SELECT id FROM {source}
                                              EXCEPT SELECT id FROM migration_backup_{source}) s)""",
        )[0]
        assert copied == scalar(migrated.db, f"SELECT count(*) FROM {source}") > 0
        assert copied == backup["row_counts"][source]
        assert missing == 0


# --- secrets ---------------------------------------------------------------------------------


def test_password_never_leaks(migrated: Migrated) -> None:
    """The password is in neither the -vvv output, the ledger, the manifest nor the report."""
    password = migrated.db["password"]
    assert password not in output_of(migrated.result)
    rows = query(migrated.db, "SELECT t::text FROM migration_ledger.history t")
    assert len(rows) >= 6
    assert not [row for row in rows if password in row[0]]
    written = list(Path(migrated.out_dirs["migration_backup_dir"]).rglob("*.json"))
    written += list(Path(migrated.out_dirs["migration_report_dir"]).rglob("*.json"))
    assert len(written) >= 2
    assert not [p for p in written if password in p.read_text()]


# --- phase 5: tenant isolation -------------------------------------------------------------------


def claims(client_id: str) -> str:
    return json.dumps({"role": "authenticated", "app_metadata": {"client_id": client_id}})


def test_tenant_isolation_through_real_sessions(migrated: Migrated) -> None:
    """As `authenticated` with client A's JWT claims: only A's rows, no write for client B;
    without claims: no rows at all."""
    client_a = scalar(migrated.db, "SELECT md5('client-1')::uuid::text")
    client_b = scalar(migrated.db, "SELECT md5('client-2')::uuid::text")
    relations = ("orchestration_workflows", "handover_packages", "unified_client_dashboard")
    conn = connect(migrated.db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(client_a),))
            cur.execute("SET LOCAL ROLE authenticated")
            for relation in relations:
                cur.execute(f"SELECT client_id::text, count(*) FROM {relation} GROUP BY 1")
                assert cur.fetchall() == [(client_a, 1)], relation
            cur.execute(
                "INSERT INTO orchestration_workflows (workflow_name, workflow_type, client_id) "
                "VALUES ('own', 'custom', %s)",
                (client_a,),
            )
            cur.execute("SAVEPOINT before_foreign")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="row-level security"):
                cur.execute(
                    "INSERT INTO orchestration_workflows (workflow_name, workflow_type, client_id) "
                    "VALUES ('foreign', 'custom', %s)",
                    (client_b,),
                )
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SET LOCAL ROLE authenticated")
            for relation in relations:
                cur.execute(f"SELECT count(*) FROM {relation}")
                assert cur.fetchone()[0] == 0, relation
        conn.rollback()
    finally:
        conn.close()
    assert scalar(migrated.db, "SELECT count(*) FROM orchestration_workflows WHERE workflow_type = 'custom'") == 0


# --- cleanup.yml ---------------------------------------------------------------------------------


def backup_tables_present(db: dict[str, Any]) -> list[str]:
    return [row[0] for row in query(db, "SELECT relname::text FROM pg_class WHERE relname = ANY(%s) ORDER BY 1",
                                    (list(BACKUP_TABLES),))]


def test_cleanup_refused_before_phase6(migrated_copy: dict[str, Any], tmp_path: Path) -> None:
    """cleanup.yml refuses to run while phase 6 is not applied, and changes nothing."""
    mark_not_applied(migrated_copy, ["6"])
    before = db_snapshot(migrated_copy)
    result = run_playbook(CLEANUP, migrated_copy, {**out_dirs_in(tmp_path), "cleanup_force": True})
    assert result.returncode != 0, playbook_output(result)
    assert "phase=all" in output_of(result)
    assert snapshot_diff(before, db_snapshot(migrated_copy)) == []


def test_cleanup_keeps_recent_backups_unless_forced(migrated_copy: dict[str, Any], tmp_path: Path) -> None:
    """After phase=all, cleanup keeps backup tables younger than 7 days and says so;
    cleanup_force=true drops them."""
    result = run_playbook(CLEANUP, migrated_copy, out_dirs_in(tmp_path))
    assert result.returncode == 0, playbook_output(result)
    assert "kept" in output_of(result)
    assert "cleanup_force" in output_of(result)
    assert backup_tables_present(migrated_copy) == sorted(BACKUP_TABLES)

    forced = run_playbook(CLEANUP, migrated_copy, {**out_dirs_in(tmp_path), "cleanup_force": True})
    assert forced.returncode == 0, playbook_output(forced)
    assert backup_tables_present(migrated_copy) == []


# --- lock safety ---------------------------------------------------------------------------------


def timed_select(cur: Any) -> float:
    """Seconds one short SELECT on client_app_overrides takes (statement_timeout caps it)."""
    started = time.monotonic()
    try:
        cur.execute("SELECT count(*) FROM client_app_overrides")
        cur.fetchone()
    except psycopg2.errors.QueryCanceled:
        pass
    return time.monotonic() - started


def test_migration_never_queues_reads_behind_its_lock(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """While a reader holds ACCESS SHARE, phase 2's ALTER retries with short lock waits, so
    other readers never queue behind it; released, the phase finishes and records retries."""
    dirs = out_dirs_in(tmp_path)
    first = run_playbook(MIGRATE, fresh_db, {"phase": 1, **dirs})
    assert first.returncode == 0, playbook_output(first)

    holder = connect(fresh_db)
    reader = connect(fresh_db)
    reader.autocommit = True
    running = None
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE client_app_overrides IN ACCESS SHARE MODE")
        running = start_playbook(MIGRATE, fresh_db, {"phase": 2, **dirs})
        timings: list[float] = []
        with reader.cursor() as cur:
            cur.execute("SET statement_timeout = '2s'")
            deadline = time.monotonic() + 120
            # Wait for phase 2's SQL session: from then on it tries to ALTER the table.
            while True:
                assert running.poll() is None, playbook_output(running.wait())
                assert time.monotonic() < deadline, "phase 2 never started its SQL"
                timings.append(timed_select(cur))
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmigrate-sql'")
                if cur.fetchone()[0]:
                    break
                time.sleep(0.05)
            contended_until = time.monotonic() + 3
            contended: list[float] = []
            while time.monotonic() < contended_until:
                contended.append(timed_select(cur))
                time.sleep(0.02)
            cur.execute(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'client_app_overrides'::regclass "
                "AND attname = 'marketplace_module_id'"
            )
            assert cur.fetchone()[0] == 0, "phase 2 altered the table despite the held lock"
        holder.commit()
        result = running.wait()
    finally:
        holder.close()
        reader.close()
        if running is not None:
            running.close()

    assert max(timings + contended) < 1.0, f"a SELECT queued: slowest {max(timings + contended):.2f} s"
    assert len(contended) >= 20
    assert result.returncode == 0, playbook_output(result)
    details = scalar(
        fresh_db,
        "SELECT details FROM migration_ledger.history WHERE phase = '2' AND status = 'succeeded'",
    )
    retries = int(details.get("lock_retries") or 0) + sum(int(s.get("lock_retries", 0)) for s in details["steps"])
    assert retries > 0, details


# --- phase 2: an index left invalid -----------------------------------------------------------------


def test_invalid_index_is_rebuilt(migrated_copy: dict[str, Any], tmp_path: Path) -> None:
    """An invalid idx_cao_installation (a failed concurrent build) is dropped and rebuilt by a
    rerun of phase 2, valid and on installation_id."""
    query(migrated_copy, "DROP INDEX idx_cao_installation")
    conn = connect(migrated_copy)
    conn.autocommit = True
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_cao_installation ON client_app_overrides (enabled)")
    finally:
        conn.close()
    index_state = (
        "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indexrelid = 'idx_cao_installation'::regclass"
    )
    valid, definition = query(migrated_copy, index_state)[0]
    assert not valid and "(enabled)" in definition

    mark_not_applied(migrated_copy, ["2", "3", "4", "5", "6"])
    result = run_playbook(MIGRATE, migrated_copy, {"phase": 2, **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    valid, definition = query(migrated_copy, index_state)[0]
    assert valid
    assert definition.endswith("(installation_id)")
    assert "UNIQUE" not in definition


def test_inserts_before_the_linking_record_the_same(migrated: Migrated, fresh_db: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """phase3_data_inserts_beside: false inserts workflows, packages and events in the foreground,
    before the linking session: the same rows, the same counts in the ledger, every inserted id
    recorded for the rollback, as the default run beside it (both from the same template)."""
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", "phase3_data_inserts_beside": False,
                                              **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)

    def phase3(db: dict[str, Any]) -> tuple[Any, ...]:
        return query(db, """
            SELECT rows_affected, details->>'overrides_linked', details->>'workflows_created',
                   details->>'handover_packages_created', details->>'integration_events_created',
                   (SELECT count(*) FROM migration_ledger.phase3_inserted),
                   (SELECT count(*) FROM orchestration_workflows) + (SELECT count(*) FROM handover_packages)
                     + (SELECT count(*) FROM integration_events)
              FROM migration_ledger.history WHERE phase = '3' AND status = 'succeeded'""")[0]

    foreground, beside = phase3(fresh_db), phase3(migrated.db)
    assert foreground == beside
    assert int(foreground[2]) > 0 and foreground[5] == foreground[6]
