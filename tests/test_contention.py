"""Safety under contention: a long transaction holds a lock on client_app_overrides while phase 2
(ALTER TABLE, CREATE INDEX CONCURRENTLY) or phase 4 (ADD FOREIGN KEY ... NOT VALID, VALIDATE)
runs.

The phase must wait in short attempts (lock_timeout, then backoff), the application's other
queries must keep flowing meanwhile (a DDL statement waiting for its lock queues every later
conflicting query behind it, so a wait without lock_timeout would stall them all for as long as
the long transaction lasts), and once the transaction ends the phase must complete and record
its retries. Real PostgreSQL, real playbook runs.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from helpers import connect, playbook_output, query, run_playbook, start_playbook
from wire_proxy import WireProxy

MIGRATE = "playbooks/migrate.yml"
# Short backoff steps, so the phase makes many attempts while the lock is held: every attempt
# is a window in which the application's queries could queue behind the DDL.
FAST_BACKOFF = {"migration_backoff_initial_ms": 50, "migration_backoff_max_ms": 300}
CONTENDED_S = 4.0
# Each attempt waits lock_timeout (50 ms) at most; the bound leaves room for a noisy machine
# and is still far below the CONTENDED_S a queue behind the waiting DDL would last.
MAX_APP_QUERY_S = 0.5


def out_dirs(directory: Path) -> dict[str, str]:
    return {"migration_backup_dir": str(directory / "backups"),
            "migration_report_dir": str(directory / "reports")}


class Application(threading.Thread):
    """Application traffic on its own connection: reads, writes to other overrides, and
    installations, each timed, until stopped."""

    def __init__(self, db: dict[str, Any], held_override: str) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.held_override = held_override
        self.timings: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = connect(self.db)
        try:
            with conn.cursor() as cur:
                cur.execute("""SELECT o.id::text, o.client_id::text FROM client_app_overrides o
                                WHERE o.id <> %s ORDER BY o.id LIMIT 50""", (self.held_override,))
                rows = cur.fetchall()
                cur.execute("SELECT id::text FROM marketplace_modules ORDER BY id LIMIT 1")
                module = cur.fetchone()[0]
            conn.commit()
            n = 0
            while not self.stop.is_set():
                override, client = rows[n % len(rows)]
                for name, sql, args in (
                    ("read", "SELECT * FROM client_app_overrides WHERE client_id = %s", (client,)),
                    ("write", "UPDATE client_app_overrides SET enabled = NOT enabled WHERE id = %s",
                     (override,)),
                    ("install", "INSERT INTO module_installations (module_id, tenant_id) VALUES (%s, %s)",
                     (module, client)),
                ):
                    started = time.monotonic()
                    try:
                        with conn.cursor() as cur:
                            cur.execute(sql, args)
                        conn.commit()
                    except psycopg2.Error as exc:
                        conn.rollback()
                        self.errors.append(f"{name}: {exc}".strip())
                    self.timings.append((name, time.monotonic() - started))
                n += 1
                time.sleep(0.01)
        finally:
            conn.close()


def waiting_migration_locks(db: dict[str, Any]) -> int:
    """Lock requests of the migration's SQL sessions that are waiting right now."""
    rows = query(db, """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                         WHERE NOT l.granted AND a.application_name = 'pgmigrate-sql'
                           AND a.datname = current_database()""")
    return int(rows[0][0])


def lock_retries(details: dict[str, Any]) -> int:
    steps = details.get("steps") or []
    return int(details.get("lock_retries") or 0) + sum(int(s.get("lock_retries") or 0) for s in steps)


COLUMNS_ADDED = """SELECT count(*) FROM pg_attribute WHERE attrelid = 'client_app_overrides'::regclass
                     AND attname = 'marketplace_module_id' AND NOT attisdropped"""
FOREIGN_KEYS = """SELECT count(*) FROM pg_constraint WHERE conrelid = 'client_app_overrides'::regclass
                    AND conname IN ('fk_cao_marketplace_module', 'fk_cao_installation')"""


@pytest.mark.parametrize(
    ("phase", "earlier", "applied_sql", "applied_count"),
    [("2", ["1"], COLUMNS_ADDED, 1), ("4", ["1", "2", "3"], FOREIGN_KEYS, 2)],
    ids=["phase2", "phase4"],
)
def test_phase_waits_for_a_long_transaction_without_stalling_the_application(
    fresh_db: dict[str, Any], tmp_path: Path, phase: str, earlier: list[str], applied_sql: str,
    applied_count: int,
) -> None:
    dirs = out_dirs(tmp_path)
    for step in earlier:
        result = run_playbook(MIGRATE, fresh_db, {"phase": step, **dirs})
        assert result.returncode == 0, playbook_output(result)

    held = query(fresh_db, "SELECT id::text FROM client_app_overrides ORDER BY id DESC LIMIT 1")[0][0]
    holder = connect(fresh_db)
    app = Application(fresh_db, held)
    running = None
    try:
        # The long transaction: an application write left open holds ROW EXCLUSIVE on the table
        # (and the row's lock) until it commits.
        with holder.cursor() as cur:
            cur.execute("SET application_name = 'long-transaction'")
            cur.execute("UPDATE client_app_overrides SET updated_at = updated_at WHERE id = %s", (held,))
        app.start()
        running = start_playbook(MIGRATE, fresh_db, {"phase": phase, **dirs, **FAST_BACKOFF})
        deadline = time.monotonic() + 180
        while waiting_migration_locks(fresh_db) == 0:
            assert running.poll() is None, playbook_output(running.wait())
            assert time.monotonic() < deadline, "the phase never started waiting for its lock"
            time.sleep(0.01)
        contended_from = time.monotonic()
        first = len(app.timings)
        while time.monotonic() - contended_from < CONTENDED_S:
            assert running.poll() is None, playbook_output(running.wait())
            time.sleep(0.05)
        contended = app.timings[first:]
        assert query(fresh_db, applied_sql)[0][0] == 0, "the phase changed the table despite the held lock"
        holder.commit()
        result = running.wait()
    finally:
        app.stop.set()
        holder.close()
        if app.is_alive():
            app.join(timeout=30)
        if running is not None:
            running.close()

    assert result.returncode == 0, playbook_output(result)
    # The application kept flowing while the phase waited, and never queued for long.
    assert len(contended) >= 60, f"only {len(contended)} application queries in {CONTENDED_S} s"
    slowest = max(contended, key=lambda t: t[1])
    assert slowest[1] < MAX_APP_QUERY_S, f"an application query waited {slowest[1]:.3f} s ({slowest[0]})"
    assert app.errors == []
    # Once the transaction ended, the phase completed, after several short attempts.
    status, details = query(
        fresh_db,
        "SELECT status, details FROM migration_ledger.history WHERE phase = %s ORDER BY id DESC LIMIT 1",
        (phase,))[0]
    assert status == "succeeded"
    assert lock_retries(details) >= 3, details
    assert query(fresh_db, applied_sql)[0][0] == applied_count


def test_preflight_takes_no_lock_on_the_applications_tables(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """The preflight runs phase 2's DDL in a scratch schema to learn the shapes it would find in
    its way. An application transaction writing clients_enhanced stays open meanwhile (its ROW
    EXCLUSIVE lock conflicts with the SHARE ROW EXCLUSIVE a foreign key to clients_enhanced
    takes): the check completes at once, without a single lock retry, because the probe's foreign
    keys point at its own bare copy - on the real table they would have stopped the
    application's writes to it for the probe's whole transaction."""
    writer = connect(fresh_db)
    try:
        with writer.cursor() as cur:
            cur.execute("UPDATE clients_enhanced SET name = name "
                        "WHERE id = (SELECT id FROM clients_enhanced ORDER BY id LIMIT 1)")
        result = run_playbook(MIGRATE, fresh_db, {"phase": "all", "migration_lock_attempts": 2, **out_dirs(tmp_path)},
                              check=True)
        assert result.returncode == 0, playbook_output(result)
        assert "gave up" not in result.stdout
    finally:
        writer.rollback()
        writer.close()
    assert query(fresh_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgmigrate_shape_probe'") == [(0,)]


# A statement taking a lock that the application's reads or writes of its own tables queue
# behind (pg_dump's ACCESS SHARE, which only DDL waits for, aside).
APP_TABLES = r"(client_app_overrides|module_installations|marketplace_modules|clients_enhanced|client_deployments)"
STRONG_LOCK = re.compile(
    r"\b(ALTER\s+TABLE(\s+ONLY)?|CREATE\s+(OR\s+REPLACE\s+)?TRIGGER\s+\w+\s+[^;]*?\bON|DROP\s+TRIGGER\s+(IF\s+EXISTS\s+)?"
    r"\w+\s+ON|CREATE\s+POLICY\s+\w+\s+ON|DROP\s+POLICY\s+(IF\s+EXISTS\s+)?\w+\s+ON|LOCK\s+TABLE(?![^;]*ACCESS\s+SHARE))"
    r"\s+(public\.)?" + APP_TABLES + r"\b", re.I)


def held_across_round_trips(connections: dict[int, list[str]]) -> list[str]:
    """Queries that take such a lock inside a transaction the controller ends in a later round
    trip (BEGIN sent on its own, as psycopg2 does), but the rollback's: BEGIN and its revert files
    in one query, its records and COMMIT in the next. The preflight's probe of phase 2 (its
    scratch schema's copies) aside."""
    found = []
    for texts in connections.values():
        inside: list[str] = []
        for i, text in enumerate(texts):
            head = text.strip().upper()
            if head == "BEGIN":
                inside = [text]
                continue
            if head in ("COMMIT", "ROLLBACK"):
                inside = []
                continue
            body = re.sub(r"--[^\n]*", "", text)
            if not STRONG_LOCK.search(body):
                if inside:
                    inside.append(text)
                continue
            if inside and not any("pgmigrate_shape_probe" in t for t in inside):
                found.append(" ".join(body.split())[:160])
            elif not inside and head.startswith("BEGIN;"):
                following = texts[i + 1] if i + 1 < len(texts) else ""
                if not following.rstrip().endswith("COMMIT"):
                    found.append("rollback: " + " ".join(body.split())[:150])
    return found


def test_no_lock_the_application_waits_for_is_held_across_a_round_trip(fresh_db: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """migrate.yml -e phase=all, then rollback.yml -e phase=all, through a proxy recording every
    query: each statement that takes a lock the application's queries on its tables wait for
    (ALTER TABLE, triggers, policies, LOCK TABLE) goes to the server in autocommit, in one query
    that the server commits as it ends - never inside a transaction the controller ends a round
    trip later, when a busy controller or a long link may keep every application query waiting.
    The rollback's transaction alone takes two round trips, its records and COMMIT in the
    second."""
    with WireProxy(fresh_db["host"], fresh_db["port"]) as proxy:
        db = {**fresh_db, "host": "127.0.0.1", "port": proxy.port}
        for playbook in (MIGRATE, "playbooks/rollback.yml"):
            result = run_playbook(playbook, db, {"phase": "all", **out_dirs(tmp_path)})
            assert result.returncode == 0, playbook_output(result)
        connections = proxy.by_connection()
    strong = [q for texts in connections.values() for q in texts if STRONG_LOCK.search(re.sub(r"--[^\n]*", "", q))]
    assert len(strong) >= 6, "the phases' DDL went through the proxy"
    assert held_across_round_trips(connections) == []
