"""The transition (issue 12, docs/transition.md): from phase 3 until complete.yml, today's
application's writes keep the new columns and tables consistent, by phase 3's own rule.

Real clusters, real playbooks, real concurrent sessions. Today's application is pgbench running
tools/bench/pgbench/old_app_*.sql, or sessions doing exactly what those do (read, flip
`enabled`, insert an installation, insert an override; never the new columns). The check of
consistency is tools/check_transition.sql, written apart from the migration's rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from conftest import TEMPLATE_SCALE
from helpers import clone_database, connect, drop_database, playbook_output, query, run_playbook
from transition_helpers import SYNC_TRIGGERS, OldApplication, drain, inconsistent, queue_depth, sync_leftovers

MIGRATE = "playbooks/migrate.yml"
ROLLBACK = "playbooks/rollback.yml"
COMPLETE = "playbooks/complete.yml"
STATUS = "playbooks/status.yml"


def dirs(tmp_path: Path) -> dict[str, str]:
    return {"migration_backup_dir": str(tmp_path / "backups"),
            "migration_report_dir": str(tmp_path / "reports")}


def run(playbook: str, db: dict[str, Any], tmp_path: Path, check: bool = False, **extra: Any) -> Any:
    result = run_playbook(playbook, db, {**dirs(tmp_path), **extra}, check=check)
    assert result.returncode == 0, playbook_output(result)
    return result


def scalar(db: dict[str, Any], sql: str, args: Any = None) -> Any:
    return query(db, sql, args)[0][0]


def linkage(db: dict[str, Any], override_id: str) -> tuple[Any, ...]:
    return query(db, """SELECT marketplace_module_id::text, installation_id::text, activation_status
                          FROM client_app_overrides WHERE id = %s""", (override_id,))[0]


def phase3_details(db: dict[str, Any]) -> dict[str, Any]:
    return scalar(db, """SELECT details FROM migration_ledger.history WHERE phase = '3'
                          AND direction = 'apply' AND status = 'succeeded' ORDER BY id DESC LIMIT 1""")


@pytest.fixture(scope="module")
def at_phase2(pg_cluster: dict[str, Any], template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A database with phases 1 and 2 applied, cloned by the tests that run phase 3."""
    base = {**pg_cluster, "dbname": template_db}
    staged = clone_database(base, f"transition_p2_{uuid.uuid4().hex[:8]}")
    tmp = tmp_path_factory.mktemp("at_phase2")
    try:
        run(MIGRATE, staged, tmp, phase="1")
        run(MIGRATE, staged, tmp, phase="2")
        yield staged
    finally:
        drop_database(staged)


@pytest.fixture
def phase2_db(at_phase2: dict[str, Any]) -> Any:
    db = clone_database(at_phase2, f"test_{uuid.uuid4().hex[:12]}")
    try:
        yield db
    finally:
        drop_database(db)


# --- the sync on a quiet database, write by write ------------------------------------------

@pytest.fixture
def migrated(fresh_db: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    run(MIGRATE, fresh_db, tmp_path, phase="all")
    return fresh_db


def test_old_application_writes_stay_consistent(migrated: dict[str, Any]) -> None:
    db = migrated
    conn = connect(db)
    conn.autocommit = True
    cur = conn.cursor()
    # An override for a module the client has installed: linked to that installation, active.
    cur.execute("""SELECT mi.tenant_id::text, mm.name, mi.id::text, mm.id::text
                     FROM module_installations mi JOIN marketplace_modules mm ON mm.id = mi.module_id
                    WHERE mm.name <> 'analytics' ORDER BY mi.id LIMIT 1""")
    tenant, name, installation, module = cur.fetchone()
    cur.execute("""INSERT INTO client_app_overrides (client_id, app_name, enabled)
                   VALUES (%s, %s, true) RETURNING id::text""", (tenant, name))
    new_override = cur.fetchone()[0]
    assert linkage(db, new_override)[2] == "active"
    assert linkage(db, new_override)[0] == module
    # the newest installation of the module wins (phase 3's rule); the client may have several
    newest = scalar(db, """SELECT id::text FROM module_installations WHERE tenant_id = %s AND module_id = %s
                            ORDER BY installed_at DESC, id LIMIT 1""", (tenant, module))
    assert linkage(db, new_override)[1] == newest
    # Flipping enabled: the status follows, both ways.
    cur.execute("UPDATE client_app_overrides SET enabled = false WHERE id = %s", (new_override,))
    assert linkage(db, new_override)[2] == "inactive"
    cur.execute("UPDATE client_app_overrides SET enabled = true WHERE id = %s", (new_override,))
    assert linkage(db, new_override)[2] == "active"
    # An override of an unknown app: pending, unlinked.
    cur.execute("""INSERT INTO client_app_overrides (client_id, app_name) VALUES (%s, 'nobody_lists_this')
                   RETURNING id::text""", (tenant,))
    unknown = cur.fetchone()[0]
    assert linkage(db, unknown) == (None, None, "pending")
    # A new installation links the client's overrides of that name and gets one event.
    cur.execute("""SELECT o.id::text, o.client_id::text, mm.id::text FROM client_app_overrides o
                     JOIN marketplace_modules mm ON mm.name = o.app_name
                    WHERE o.installation_id IS NULL AND o.app_name <> 'analytics' ORDER BY o.id LIMIT 1""")
    plain, plain_client, plain_module = cur.fetchone()
    cur.execute("""INSERT INTO module_installations (module_id, tenant_id) VALUES (%s, %s)
                   RETURNING id::text""", (plain_module, plain_client))
    fresh_installation = cur.fetchone()[0]
    # What an installation derives in other rows is queued, in its own transaction, and
    # applied by the drain: consistent once drained.
    assert queue_depth(db) == 1
    assert drain(db) == 1 and queue_depth(db) == 0
    assert linkage(db, plain)[1] == fresh_installation
    assert scalar(db, """SELECT count(*) FROM integration_events
                          WHERE correlation_id = %s AND event_type = 'module_installed'""",
                  (fresh_installation,)) == 1
    assert scalar(db, """SELECT count(*) FROM migration_ledger.phase3_inserted
                          WHERE table_name = 'integration_events'
                            AND row_id = (SELECT id FROM integration_events WHERE correlation_id = %s)""",
                  (fresh_installation,)) == 1
    # The name listed twice: installing the newer listing makes it win for that client.
    cur.execute("""SELECT o.id::text, o.client_id::text FROM client_app_overrides o
                    WHERE o.app_name = 'analytics' AND o.installation_id IS NULL ORDER BY o.id LIMIT 1""")
    dup_override, dup_client = cur.fetchone()
    newer = scalar(db, """SELECT id::text FROM marketplace_modules WHERE name = 'analytics'
                           ORDER BY created_at DESC LIMIT 1""")
    cur.execute("INSERT INTO module_installations (module_id, tenant_id) VALUES (%s, %s) RETURNING id::text",
                (newer, dup_client))
    dup_installation = cur.fetchone()[0]
    drain(db)
    assert linkage(db, dup_override)[:2] == (newer, dup_installation)
    # After phase 4, deleting an installation deletes its overrides (the strategy's CASCADE).
    cur.execute("DELETE FROM module_installations WHERE id = %s", (dup_installation,))
    assert scalar(db, "SELECT count(*) FROM client_app_overrides WHERE id = %s", (dup_override,)) == 0
    # A renamed listing: its overrides of the old name go pending, those of the new name link.
    cur.execute("SELECT id::text FROM marketplace_modules WHERE name = 'app_07'")
    renamed = cur.fetchone()[0]
    cur.execute("INSERT INTO marketplace_modules (name) VALUES ('brand_new_app') RETURNING id::text")
    listing = cur.fetchone()[0]
    cur.execute("""INSERT INTO client_app_overrides (client_id, app_name) VALUES (%s, 'brand_new_app')
                   RETURNING id::text""", (tenant,))
    assert linkage(db, cur.fetchone()[0]) == (listing, None, "active")
    cur.execute("UPDATE marketplace_modules SET name = 'app_07_renamed' WHERE id = %s", (renamed,))
    drain(db)
    assert scalar(db, """SELECT count(*) FROM client_app_overrides
                          WHERE app_name = 'app_07' AND (marketplace_module_id IS NOT NULL
                                OR activation_status <> 'pending')""") == 0
    cur.execute("UPDATE marketplace_modules SET name = 'app_07' WHERE id = %s", (renamed,))
    drain(db)
    # The next application version writes the new columns itself: its values stand.
    cur.execute("""INSERT INTO client_app_overrides (client_id, app_name, enabled, activation_status)
                   VALUES (%s, %s, true, 'inactive') RETURNING id::text""", (tenant, name))
    assert linkage(db, cur.fetchone()[0]) == (None, None, "inactive")
    cur.execute("""UPDATE client_app_overrides SET enabled = false, activation_status = 'pending'
                    WHERE id = %s""", (new_override,))
    assert linkage(db, new_override)[2] == "pending"
    cur.execute("UPDATE client_app_overrides SET enabled = true, activation_status = 'active' WHERE id = %s",
                (new_override,))
    # ... and everything the old application wrote is consistent by the independent check
    # (the two rows written by the "next version" above are the only exceptions, removed here).
    cur.execute("""DELETE FROM client_app_overrides WHERE activation_status = 'inactive'
                    AND marketplace_module_id IS NULL""")
    conn.close()
    assert inconsistent(db) == {}
    # The application's role may not write the ledger: the trigger functions run as their
    # owner, with a fixed search_path. The relink is the drain's own statement: no function of
    # its own without a fixed search_path.
    assert scalar(db, """SELECT count(*) FROM pg_proc WHERE pronamespace = 'migration_ledger'::regnamespace
                          AND proname LIKE 'transition_sync%%' AND prosecdef
                          AND array_to_string(proconfig, ',') LIKE 'search_path=%%'""") == 3
    assert scalar(db, """SELECT count(*) FROM pg_proc WHERE pronamespace = 'migration_ledger'::regnamespace
                           AND proname LIKE 'transition%%' AND proconfig IS NULL""") == 0
    # The queue's functions: only their owner (the migration's login) may call them, each with
    # a fixed search_path.
    assert query(db, """SELECT proname, prosecdef, array_to_string(proconfig, ',') LIKE 'search_path=%%',
                               has_function_privilege('public', oid, 'EXECUTE')
                          FROM pg_proc WHERE pronamespace = 'migration_ledger'::regnamespace
                           AND proname IN ('transition_drain', 'transition_queue_state', 'transition_fold_sync_log')
                         ORDER BY proname""") == [
        ("transition_drain", False, True, False), ("transition_fold_sync_log", False, True, False),
        ("transition_queue_state", False, True, False)]
    # The linkage rule (phase 3's 005): its two sets are views, its functions have a fixed
    # search_path (Supabase's linter, function_search_path_mutable), and only their owner may use
    # either.
    assert query(db, """SELECT proname, prosecdef, array_to_string(proconfig, ',') LIKE 'search_path=%%',
                               has_function_privilege('public', oid, 'EXECUTE')
                          FROM pg_proc WHERE pronamespace = 'migration_ledger'::regnamespace
                           AND proname LIKE 'phase3%%' ORDER BY proname""") == [
        ("phase3_installed_event", False, True, False), ("phase3_linkage", False, True, False),
        ("phase3_linkage_choice", False, True, False)]
    assert query(db, """SELECT relname, relkind, has_table_privilege('public', oid, 'SELECT')
                          FROM pg_class WHERE relnamespace = 'migration_ledger'::regnamespace
                           AND relname LIKE 'phase3%%listings' ORDER BY relname""") == [
        ("phase3_installed_listings", "v", False), ("phase3_listings", "v", False)]


def test_installations_never_scan_the_events_when_their_plan_was_made_on_an_empty_table(
        migrated: dict[str, Any]) -> None:
    """The drain's plans are kept for the session (generic plans). One made while
    integration_events was recorded empty (a VACUUM since phase 2, before phase 3 filled it) read
    the whole table at every later installation of that session (33 ms instead of 0.8 at 300,000
    events, until the next ANALYZE); the drain never scans it: here the table is emptied and
    vacuumed, and a new session's installations, applied by a new drain session, only probe its
    index."""
    conn = connect(migrated)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM integration_events")
            cur.execute("VACUUM ANALYZE integration_events")
            cur.execute("SELECT reltuples, relpages FROM pg_class WHERE relname = 'integration_events'")
            assert cur.fetchone() == (0, 0)
    finally:
        conn.close()

    def scans() -> tuple[int, int]:
        return query(migrated, """SELECT seq_scan, idx_scan FROM pg_stat_user_tables
                                   WHERE relname = 'integration_events'""")[0]

    seq_before, idx_before = scans()
    app = connect(migrated)
    app.autocommit = True
    try:
        with app.cursor() as cur:
            cur.execute("SELECT id FROM clients_enhanced ORDER BY id LIMIT 3")
            clients = [row[0] for row in cur.fetchall()]
            cur.execute("SELECT id FROM marketplace_modules ORDER BY id LIMIT 1")
            module = cur.fetchone()[0]
            for client in clients:
                cur.execute("""INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
                               VALUES (%s, %s, now(), 'installed')""", (module, client))
    finally:
        app.close()  # its counters reach pg_stat_user_tables as the session ends
    # The events are the drain's work (the installations queued them), in a new session too.
    assert drain(migrated) == len(clients)
    deadline = time.monotonic() + 10
    while sum(scans()) - seq_before - idx_before < len(clients) and time.monotonic() < deadline:
        time.sleep(0.1)
    seq_after, idx_after = scans()
    assert (seq_after - seq_before, idx_after - idx_before) == (0, len(clients))
    assert scalar(migrated, "SELECT count(*) FROM integration_events") == len(clients)


def test_an_installation_sees_an_override_committed_while_it_waited(migrated: dict[str, Any]) -> None:
    """An installation queues what it derives for the client's overrides of the module's name;
    the drain relinks them holding the client's advisory lock, in a snapshot taken after it. An
    override of that name inserted by a transaction still open when the installation committed
    (it holds the lock shared, and derived its linkage before the installation existed) keeps
    the entry queued: the drain does not wait for it, and applies the entry once it has
    committed, linking the override to the new installation. Neither the installation nor the
    drain waits for the open transaction."""
    tenant, name, module = query(migrated, """
        SELECT c.id::text, mm.name, mm.id::text FROM clients_enhanced c
         CROSS JOIN marketplace_modules mm
         WHERE mm.name IN (SELECT name FROM marketplace_modules GROUP BY name HAVING count(*) = 1)
           AND NOT EXISTS (SELECT 1 FROM client_app_overrides o WHERE o.client_id = c.id AND o.app_name = mm.name)
           AND NOT EXISTS (SELECT 1 FROM module_installations mi WHERE mi.tenant_id = c.id AND mi.module_id = mm.id)
         ORDER BY c.id, mm.name LIMIT 1""")[0]
    writer = connect(migrated)
    installer = connect(migrated)
    installer.autocommit = True
    drainer = connect(migrated)
    drainer.autocommit = True
    try:
        with writer.cursor() as cur:
            cur.execute("""INSERT INTO client_app_overrides (client_id, app_name, enabled)
                           VALUES (%s, %s, true) RETURNING id::text""", (tenant, name))
            override = cur.fetchone()[0]
            cur.execute("SELECT marketplace_module_id::text, installation_id FROM client_app_overrides WHERE id = %s",
                        (override,))
            assert cur.fetchone() == (module, None)
        with installer.cursor() as cur:
            cur.execute("SET statement_timeout = '5s'")  # it must not wait for the writer
            cur.execute("""INSERT INTO module_installations (module_id, tenant_id) VALUES (%s, %s)
                           RETURNING id::text""", (module, tenant))
            installation = cur.fetchone()[0]
        with drainer.cursor() as cur:
            cur.execute("SET statement_timeout = '5s'")  # nor the drain
            cur.execute("SELECT migration_ledger.transition_drain(100)")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT installation_id::text FROM migration_ledger.transition_queue")
            assert cur.fetchall() == [(installation,)]
            writer.commit()
            cur.execute("SELECT migration_ledger.transition_drain(100)")
            assert cur.fetchone()[0] == 1
    finally:
        writer.close()
        installer.close()
        drainer.close()
    assert linkage(migrated, override) == (module, installation, "active")
    assert inconsistent(migrated) == {}


def installations_queued(db: dict[str, Any], count: int) -> list[str]:
    """`count` installations as today's application records them, one transaction each, for
    clients with an override of the module's name (so the drain relinks as well): queued."""
    rows = query(db, """SELECT DISTINCT ON (o.client_id) o.client_id::text, mm.id::text
                          FROM client_app_overrides o JOIN marketplace_modules mm ON mm.name = o.app_name
                         ORDER BY o.client_id, mm.created_at DESC LIMIT %s""", (count,))
    conn = connect(db)
    conn.autocommit = True
    ids = []
    try:
        with conn.cursor() as cur:
            for client, module in rows:
                cur.execute("""INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
                               VALUES (%s, %s, now(), 'installed') RETURNING id::text""", (module, client))
                ids.append(cur.fetchone()[0])
    finally:
        conn.close()
    return ids


def applied_once(db: dict[str, Any], installations: list[str]) -> dict[str, int]:
    """For the given installations: their module_installed events, and the ledger's records of
    events; each exactly once per installation when the queue was applied once."""
    return dict(query(db, """
        SELECT 'events', count(*) FROM integration_events
         WHERE correlation_id = ANY (%(ids)s::uuid[]) AND event_type = 'module_installed'
        UNION ALL
        SELECT 'recorded', count(*) FROM migration_ledger.phase3_inserted i
          JOIN integration_events e ON e.id = i.row_id
         WHERE i.table_name = 'integration_events' AND e.correlation_id = ANY (%(ids)s::uuid[])
        UNION ALL
        SELECT 'distinct recorded', count(DISTINCT i.row_id) FROM migration_ledger.phase3_inserted i
          JOIN integration_events e ON e.id = i.row_id
         WHERE i.table_name = 'integration_events' AND e.correlation_id = ANY (%(ids)s::uuid[])""",
                      {"ids": installations}))


DRAINER = """
import sys, time, psycopg2
conn = psycopg2.connect(sys.argv[1], application_name="test-drainer")
conn.autocommit = True
cur = conn.cursor()
while True:
    # Each call's transaction stays open a while after the entries are applied: killed then, it
    # holds claimed, applied, uncommitted entries.
    cur.execute("BEGIN")
    cur.execute("SELECT migration_ledger.transition_drain(7)")
    print(cur.fetchone()[0], flush=True)
    time.sleep(0.15)
    cur.execute("COMMIT")
"""


def test_a_drain_killed_mid_batch_loses_nothing_and_applies_nothing_twice(
        migrated: dict[str, Any], tmp_path: Path) -> None:
    """A drainer's session ended (pg_terminate_backend) while it holds claimed entries it has
    applied but not committed, and a drainer process killed (SIGKILL) between its calls and in
    the middle of one: every entry ends applied exactly once (one event and one ledger record
    per installation) or still queued, and the rest drains after. A second drainer never waits
    for the first's claims (SKIP LOCKED)."""
    db = migrated
    installations = installations_queued(db, 40)  # one per client: no two share a client's lock
    assert queue_depth(db) == 40
    # 1. A session applies 15 entries and is terminated before it commits.
    held = connect(db)
    other = connect(db)
    other.autocommit = True
    try:
        with held.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), migration_ledger.transition_drain(15)")
            pid, applied = cur.fetchone()
            assert applied == 15
        with other.cursor() as cur:
            # Another drainer takes only what the first has not claimed, without waiting.
            cur.execute("SET statement_timeout = '5s'")
            cur.execute("BEGIN")
            cur.execute("SELECT migration_ledger.transition_drain(1000)")
            assert cur.fetchone()[0] == 25
            cur.execute("ROLLBACK")
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert cur.fetchone()[0]
        with pytest.raises(psycopg2.Error), held.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        held.close()
        other.close()
    assert queue_depth(db) == 40
    assert applied_once(db, installations) == {"events": 0, "recorded": 0, "distinct recorded": 0}
    # 2. A drainer process, killed with SIGKILL while it runs.
    dsn = f"host={db['host']} port={db['port']} user={db['user']} password={db['password']} dbname={db['dbname']}"
    proc = subprocess.Popen([sys.executable, "-c", DRAINER, dsn], stdout=subprocess.PIPE, text=True)
    try:
        done = 0
        while done < 3:  # a few calls committed, then killed in the middle of another
            line = proc.stdout.readline()
            assert line, "the drainer stopped"
            done += 1
        time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 30
    while query(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'test-drainer'")[0][0]:
        assert time.monotonic() < deadline, "the killed drainer's session did not end"
        time.sleep(0.1)
    left = queue_depth(db)
    assert 0 < left < 40
    # What it committed was applied once; what it had not is still queued: together, all.
    assert applied_once(db, installations) == {"events": 40 - left, "recorded": 40 - left,
                                               "distinct recorded": 40 - left}
    assert drain(db) == left
    assert applied_once(db, installations) == {"events": 40, "recorded": 40, "distinct recorded": 40}
    assert inconsistent(db) == {}


def test_installation_deleted_before_phase_4_relinks(phase2_db: dict[str, Any], tmp_path: Path) -> None:
    db = phase2_db
    run(MIGRATE, db, tmp_path, phase="3")
    row = query(db, """SELECT o.id::text, o.installation_id::text FROM client_app_overrides o
                        WHERE o.installation_id IS NOT NULL ORDER BY o.id LIMIT 1""")[0]
    conn = connect(db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DELETE FROM module_installations WHERE id = %s", (row[1],))
    conn.close()
    # No foreign key yet: the override stays, linked again by the rule (another installation of
    # the module, or none), once the queue is drained.
    assert drain(db) == 1
    assert linkage(db, row[0])[1] != row[1]
    assert inconsistent(db) == {}


def test_the_validator_refuses_a_queue_not_drained(phase2_db: dict[str, Any], tmp_path: Path) -> None:
    """Phase 6 drains the transition's queue, then validates; an entry an application
    transaction keeps from the drain (an override of the client being inserted, still open)
    stays queued, and the validator fails, naming the depth. Once that transaction ends,
    phase 6 passes."""
    db = phase2_db
    for phase in ("3", "4", "5"):
        run(MIGRATE, db, tmp_path, phase=phase)
    installations = installations_queued(db, 1)
    client = scalar(db, "SELECT tenant_id::text FROM module_installations WHERE id = %s", (installations[0],))
    writer = connect(db)
    try:
        with writer.cursor() as cur:
            cur.execute("""INSERT INTO client_app_overrides (client_id, app_name, enabled)
                           VALUES (%s, 'app_03', true)""", (client,))
        refused = run_playbook(MIGRATE, db, {**dirs(tmp_path), "phase": "6", "migration_lock_attempts": 2})
        assert refused.returncode != 0, playbook_output(refused)
        text = " ".join(refused.stdout.split())
        assert "transition.queue_drained" in text and "1 queued before the drain (depth 1)" in text, \
            playbook_output(refused)
        assert queue_depth(db) == 1
    finally:
        writer.commit()
        writer.close()
    run(MIGRATE, db, tmp_path, phase="6")
    assert queue_depth(db) == 0
    assert inconsistent(db) == {}


def test_a_rollback_with_work_queued_is_as_precise(phase2_db: dict[str, Any], tmp_path: Path) -> None:
    """Installations queued (their events and relinks not applied yet) and flips whose records
    are still in the sync's log when the rollback starts: the rollback applies and folds them
    first, then puts everything back; nothing of the migration is left, what the application
    wrote stays."""
    db = phase2_db
    run(MIGRATE, db, tmp_path, phase="3")
    installations = installations_queued(db, 40)
    conn = connect(db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("""UPDATE client_app_overrides SET enabled = NOT enabled, updated_at = now()
                        WHERE id IN (SELECT id FROM client_app_overrides WHERE marketplace_module_id IS NOT NULL
                                      ORDER BY id LIMIT 30)""")
        cur.execute("INSERT INTO marketplace_modules (name) VALUES ('app_05')")
    conn.close()
    assert queue_depth(db) == 41
    assert scalar(db, "SELECT count(*) FROM migration_ledger.phase3_override_sync_log") >= 30
    run(ROLLBACK, db, tmp_path, phase="data")
    assert sync_leftovers(db) == []
    assert pristine_new_columns(db) == {"overrides linked or not pending": 0, "events": 0,
                                        "workflows": 0, "packages": 0}
    assert scalar(db, "SELECT count(*) FROM module_installations WHERE id = ANY (%s::uuid[])",
                  (installations,)) == 40
    assert query(db, """SELECT (SELECT count(*) FROM migration_ledger.transition_queue),
                               (SELECT count(*) FROM migration_ledger.phase3_override_sync_log),
                               (SELECT count(*) FROM migration_ledger.phase3_override_sync)""") == [(0, 0, 0)]


# --- the backfill and the sync, concurrently ------------------------------------------------

# Another override on the held override's planned page has been linked by the backfill (not by
# the sync, which pgbench's flips fire: its record, folded or still in the log): the batch
# covering that page ran while the holder kept its transaction open.
PAGE_PASSED = """
    SELECT count(*) FROM migration_ledger.phase3_override_plan p
      JOIN client_app_overrides o ON o.id = p.override_id
     WHERE (p.planned_ctid::text::point)[0] = (
               SELECT (planned_ctid::text::point)[0] FROM migration_ledger.phase3_override_plan
                WHERE override_id = md5('override-7-3')::uuid)
       AND o.client_id <> md5('client-7')::uuid AND o.marketplace_module_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_sync s WHERE s.override_id = o.id)
       AND NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_sync_log g WHERE g.override_id = o.id)"""


class Holder(threading.Thread):
    """A session of today's application that opens a transaction once the sync exists, makes
    one write (`statement`), and keeps the transaction open until the backfill has linked the
    page of override-7-3 around it (at least `hold_s`): whatever the backfill does meanwhile
    must neither wait for it nor overwrite it."""

    def __init__(self, db: dict[str, Any], statement: str, args: tuple, hold_s: float) -> None:
        super().__init__(daemon=True)
        self.db, self.statement, self.args, self.hold_s = db, statement, args, hold_s
        self.error: str | None = None
        self.wrote_at: float | None = None
        self.page_passed = False

    def run(self) -> None:
        try:
            conn, watch = connect(self.db), connect(self.db)
            watch.autocommit = True
            with conn.cursor() as cur, watch.cursor() as look:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    look.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s", (SYNC_TRIGGERS[0],))
                    if look.fetchone()[0]:
                        break
                    time.sleep(0.005)
                cur.execute(self.statement, self.args)
                self.wrote_at = time.monotonic()
                time.sleep(self.hold_s)
                while time.monotonic() < deadline and not self.page_passed:
                    look.execute("SELECT to_regclass('migration_ledger.phase3_override_plan') IS NOT NULL")
                    if look.fetchone()[0]:
                        look.execute(PAGE_PASSED)
                        self.page_passed = look.fetchone()[0] > 0
                    time.sleep(0.05)
                time.sleep(0.5)
            conn.commit()
            conn.close()
            watch.close()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)


@pytest.mark.parametrize("order", ["flip_held_across_batches", "installation_held_across_batches",
                                   "override_inserted_held"])
def test_backfill_never_waits_for_nor_overwrites_the_application(
        phase2_db: dict[str, Any], tmp_path: Path, order: str) -> None:
    db = phase2_db
    deadlocks = scalar(db, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    statement, args = {
        "flip_held_across_batches": (
            "UPDATE client_app_overrides SET enabled = NOT enabled, updated_at = now() WHERE id = md5(%s)::uuid",
            ("override-7-3",)),
        # a client whose overrides the batches are linking gets an installation meanwhile
        "installation_held_across_batches": (
            """INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
               SELECT mm.id, md5('client-7')::uuid, now(), 'installed' FROM marketplace_modules mm
                WHERE mm.name = (SELECT app_name FROM client_app_overrides
                                  WHERE id = md5('override-7-3')::uuid)
                ORDER BY mm.created_at DESC LIMIT 1""", ()),
        "override_inserted_held": (
            "INSERT INTO client_app_overrides (client_id, app_name, enabled) VALUES (md5(%s)::uuid, 'app_05', true)",
            ("client-7",)),
    }[order]
    holder = Holder(db, statement, args, hold_s=1.0)
    holder.start()
    app = OldApplication(db, TEMPLATE_SCALE, tmp_path, rate=100)
    try:
        started = time.monotonic()
        run(MIGRATE, db, tmp_path, phase="3")
    finally:
        holder.join(60)
        counts = app.stop()
    assert holder.error is None, holder.error
    assert holder.wrote_at is not None and holder.wrote_at > started
    assert holder.page_passed, "the backfill never linked the held override's page"
    assert counts["processed"] > 0 and counts["failed"] == 0, (counts, app.output)
    details = phase3_details(db)
    if order == "flip_held_across_batches":
        # the batch met the held rows, skipped them, and linked what was left in a later pass
        assert int(details["rows_skipped_locked"]) >= 1, details
    # (An installation locks none of the client's overrides any more: it only queues their
    # relinking, which the drain applies after the backfill, once the installation committed.)
    assert inconsistent(db) == {}
    assert scalar(db, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") == deadlocks
    # no row derived twice differently: every override is in at most one consistent record of
    # what the migration wrote last, and it holds exactly that
    assert scalar(db, """SELECT count(*) FROM client_app_overrides cao
                          JOIN migration_ledger.phase3_override_sync s ON s.override_id = cao.id
                         WHERE (cao.marketplace_module_id, cao.installation_id, cao.activation_status)
                               IS DISTINCT FROM (s.module_id, s.installation_id, s.new_status)""") == 0
    assert scalar(db, """SELECT count(*) FROM client_app_overrides cao
                          JOIN migration_ledger.phase3_override_plan p ON p.override_id = cao.id
                         WHERE NOT EXISTS (SELECT 1 FROM migration_ledger.phase3_override_sync s
                                            WHERE s.override_id = cao.id)
                           AND (cao.marketplace_module_id, cao.installation_id, cao.activation_status)
                               IS DISTINCT FROM (p.module_id, p.installation_id, p.new_status)""") == 0


# --- the whole transition under today's application -----------------------------------------

def pristine_new_columns(db: dict[str, Any]) -> dict[str, int]:
    """After a rollback of phase 3's data: what the migration wrote is gone (today's
    application never writes the new columns or tables)."""
    return dict(query(db, """SELECT 'overrides linked or not pending', count(*) FROM client_app_overrides
                              WHERE marketplace_module_id IS NOT NULL OR installation_id IS NOT NULL
                                 OR activation_status <> 'pending'
                             UNION ALL SELECT 'events', count(*) FROM integration_events
                             UNION ALL SELECT 'workflows', count(*) FROM orchestration_workflows
                             UNION ALL SELECT 'packages', count(*) FROM handover_packages"""))


def test_transition_under_old_application_traffic(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """The issue's done-when, small: today's application from before phase 1 to after phase 6;
    consistent; rollback of the data and phase 3 again under the same traffic, consistent; the
    cutover leaves no trigger or function of the migration; a rollback after it still works."""
    db = fresh_db
    app = OldApplication(db, TEMPLATE_SCALE, tmp_path, rate=150)
    try:
        time.sleep(1)
        refused = run_playbook(COMPLETE, db, dirs(tmp_path))
        assert refused.returncode != 0, playbook_output(refused)
        assert "Run migrate.yml -e phase=all" in refused.stdout, playbook_output(refused)
        run(MIGRATE, db, tmp_path, phase="all")
        time.sleep(1)
        assert inconsistent(db) == {}
        run(ROLLBACK, db, tmp_path, phase="data")
        time.sleep(0.5)
        assert sync_leftovers(db) == []
        assert pristine_new_columns(db) == {"overrides linked or not pending": 0, "events": 0,
                                            "workflows": 0, "packages": 0}
        run(MIGRATE, db, tmp_path, phase="3")
        time.sleep(1)
        assert inconsistent(db) == {}
        status = run(STATUS, db, tmp_path)
        assert "transition OPEN since" in status.stdout
        # check mode tells what it would do, and does nothing
        checked = run(COMPLETE, db, tmp_path, check=True)
        assert "would remove the sync (3 triggers" in checked.stdout, playbook_output(checked)
        assert len(sync_leftovers(db)) > 0
        run(COMPLETE, db, tmp_path)
        assert sync_leftovers(db) == []
        status = run(STATUS, db, tmp_path)
        assert "transition COMPLETED at" in status.stdout
        again = run(COMPLETE, db, tmp_path)
        assert "Nothing to do: the transition was completed" in again.stdout
        record = query(db, """SELECT operator, status FROM migration_ledger.history
                               WHERE phase = 'complete' ORDER BY id""")
        assert [r[1] for r in record] == ["succeeded"]
    finally:
        counts = app.stop()
    assert counts["processed"] > 0 and counts["failed"] == 0, (counts, app.output)
    # After the cutover a rollback still puts back exactly what the migration wrote (today's
    # application kept writing without the sync: its rows hold the columns' defaults).
    run(ROLLBACK, db, tmp_path, phase="data")
    assert pristine_new_columns(db) == {"overrides linked or not pending": 0, "events": 0,
                                        "workflows": 0, "packages": 0}
    report = json.dumps(phase3_details(db))
    assert "events_since" in report
