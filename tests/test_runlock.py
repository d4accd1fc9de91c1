"""One run at a time per database: the run lock (plugins/module_utils/pgmigrate_runlock.py).

Real runs side by side on one database: two migrations started half a second apart (one is
refused, naming the other; nothing is done twice), a rollback, a status and a check-mode run
during a migration, and a migration killed with SIGKILL (its lock goes with it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import db_snapshot, playbook_output, query, run_playbook, snapshot_diff
from rollback_helpers import MIGRATE, ROLLBACK, Background, duplicates, out_dirs_in, wait_for

RUNLOCK_KEY = 0x70676D6967726174
STATUS = "playbooks/status.yml"


def lock_holder(db: dict[str, Any]) -> dict[str, Any] | None:
    """The identity card of the session holding the run lock, read as a second run reads it."""
    rows = query(db, """SELECT a.pid, a.application_name, a.query FROM pg_locks l
                          JOIN pg_stat_activity a ON a.pid = l.pid
                         WHERE l.locktype = 'advisory' AND l.granted AND l.database =
                               (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid = %s AND l.objid = %s""",
                 (RUNLOCK_KEY >> 32, RUNLOCK_KEY & 0xFFFFFFFF))
    if not rows:
        return None
    pid, app, text = rows[0]
    card = json.loads(text.splitlines()[0].removeprefix("-- pgmigrate-runlock "))
    return {"backend_pid": pid, "application_name": app, **card}


def untouched(db: dict[str, Any]) -> dict[str, Any]:
    """The database's fingerprint, but for the rows of the ledger, which the migration holding
    the lock writes meanwhile (its records, its retries)."""
    snapshot = db_snapshot(db)
    snapshot["data"] = {k: v for k, v in snapshot["data"].items() if not k.startswith("migration_ledger.")}
    return snapshot


def flat(text: str) -> str:
    return " ".join(text.split())


def blocked_in_phase2(db: dict[str, Any]) -> Any:
    """A session holding a lock phase 2's ALTER waits for: the migration stays in phase 2 (in
    short attempts, see migration_lock_attempts below) until the session ends."""
    from helpers import connect

    conn = connect(db)
    with conn.cursor() as cur:
        cur.execute("BEGIN; LOCK TABLE client_app_overrides IN ACCESS SHARE MODE")
    return conn


PATIENT = {"migration_lock_attempts": 100000, "migration_backoff_max_ms": 200}


def test_two_migrations_half_a_second_apart(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """Two `migrate.yml -e phase=all` on one database, the second started 0.5 s after the first:
    one runs all six phases (the validator passes), the other is refused before it changes
    anything, naming the first (playbook, operator, run id, since, controller); every phase is
    applied once and nothing is inserted twice."""
    runs = [Background(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path / "first")}, tmp_path / "first")]
    time.sleep(0.5)
    runs.append(Background(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path / "second")},
                           tmp_path / "second"))
    try:
        codes = [run.wait(timeout=900) for run in runs]
        outputs = [flat(run.output()) for run in runs]
    finally:
        for run in runs:
            run.close()
    # Usually the first wins; on a loaded machine the second may reach the lock first.
    assert sorted(code == 0 for code in codes) == [False, True], outputs
    loser = 1 if codes[0] == 0 else 0
    run_ids = {r[0] for r in query(fresh_db, "SELECT DISTINCT run_id::text FROM migration_ledger.history")}
    assert len(run_ids) == 1, run_ids
    refusal = outputs[loser]
    assert "is locked by another run: migrate.yml run " + run_ids.pop() in refusal, refusal
    for needle in ("by ", "since 20", "from ", "Nothing was changed", "playbooks/status.yml"):
        assert needle in refusal, refusal
    per_phase = query(fresh_db, """SELECT phase, count(*) FROM migration_ledger.history
                                    WHERE direction = 'apply' GROUP BY phase ORDER BY phase""")
    assert per_phase == [(str(n), 1) for n in range(1, 7)]
    assert query(fresh_db, "SELECT status, details->>'passed' FROM migration_ledger.history "
                           "WHERE phase = '6'") == [("succeeded", "true")]
    assert all(v == 0 for v in duplicates(fresh_db).values()), duplicates(fresh_db)
    events = query(fresh_db, "SELECT count(*), count(DISTINCT correlation_id) FROM integration_events "
                             "WHERE event_type = 'module_installed'")[0]
    assert events[0] == events[1] > 0
    assert lock_holder(fresh_db) is None, "the lock outlived its run"


def test_run_in_progress(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """While a migration runs: status.yml shows it (and does not wait), a check-mode run says who
    holds the lock and completes without taking it, a rollback is refused naming the migration,
    changing nothing, a sign-off decision is recorded; the migration then completes."""
    blocker = blocked_in_phase2(fresh_db)
    migration = Background(MIGRATE, fresh_db, {"phase": "all", **PATIENT, **out_dirs_in(tmp_path / "m")},
                           tmp_path / "m")
    try:
        card = wait_for(lambda: lock_holder(fresh_db), "the migration's run lock", migration)
        assert card["playbook"] == "migrate" and card["application_name"] == "pgmigrate-runlock"
        # The holder watches the ansible-playbook process itself, not a worker.
        assert card["controller_pid"] == migration.proc.pid
        # A lost controller's session is ended by the server within idle + interval * count.
        assert card["keepalives"] == {"tcp_keepalives_idle": "15", "tcp_keepalives_interval": "5",
                                      "tcp_keepalives_count": "6"}
        wait_for(lambda: query(fresh_db, "SELECT count(*) FROM migration_ledger.history WHERE phase = '2'")[0][0]
                 if query(fresh_db, "SELECT to_regclass('migration_ledger.history')")[0][0] else 0,
                 "phase 2 to start", migration)

        started = time.monotonic()
        status = run_playbook(STATUS, fresh_db)
        text = flat(status.stdout)
        assert status.returncode == 0, playbook_output(status)
        assert f"run in progress: migrate.yml run {card['run_id']} by {card['operator']}" in text, text
        assert f"since {card['since']}" in text and f"from {card['controller']}" in text, text

        check = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path / "c")}, check=True)
        assert check.returncode == 0, playbook_output(check)
        assert f"run {card['run_id']}" in flat(check.stdout) and "holds the run lock" in flat(check.stdout)
        assert lock_holder(fresh_db)["run_id"] == card["run_id"]

        before = untouched(fresh_db)
        rollback = run_playbook(ROLLBACK, fresh_db, {"phase": "all", **out_dirs_in(tmp_path / "r")})
        assert rollback.returncode != 0, playbook_output(rollback)
        assert f"is locked by another run: migrate.yml run {card['run_id']}" in flat(rollback.stdout)
        assert snapshot_diff(before, untouched(fresh_db)) == []
        # A decision on the sign-off sheet is recorded during the run (a no-go would stop it at
        # its next checkpoint): approve.yml takes the lock only to create the ledger.
        approve = run_playbook("playbooks/approve.yml", fresh_db, {
            "approval_role": "DBA", "approved_by": "Jane Doe", **out_dirs_in(tmp_path / "a")})
        assert approve.returncode == 0, playbook_output(approve)
        assert query(fresh_db, "SELECT name FROM migration_ledger.approvals") == [("Jane Doe",)]
        # None of them waited for the migration (it is still held in phase 2).
        assert migration.running(), migration.output()
        assert time.monotonic() - started < 600

        blocker.rollback()
        assert migration.wait(timeout=900) == 0, migration.output()
    finally:
        blocker.close()
        migration.close()
    assert query(fresh_db, "SELECT count(*) FROM migration_ledger.history WHERE status = 'succeeded' "
                           "AND direction = 'apply'")[0][0] == 6
    assert lock_holder(fresh_db) is None
    status = run_playbook(STATUS, fresh_db)
    assert "no run in progress" in status.stdout, playbook_output(status)


@pytest.mark.parametrize("direct", [True, False], ids=["in-worker", "module-process"])
def test_killed_run_releases_the_lock(fresh_db: dict[str, Any], tmp_path: Path, direct: bool) -> None:
    """A migration SIGKILLed with its whole process group (the holder is in a session of its
    own, so it survives the kill and must notice) leaves no lock behind: the lock is gone within
    seconds, and the same command run again completes. Modules run in Ansible's worker (the
    default) or as module processes (a non-local connection, Molecule's default scenario)."""
    blocker = blocked_in_phase2(fresh_db)
    migration = Background(MIGRATE, fresh_db, {"phase": "all", **PATIENT, **out_dirs_in(tmp_path / "m"),
                                               "pgmigrate_direct_execution": direct}, tmp_path / "m")
    try:
        card = wait_for(lambda: lock_holder(fresh_db), "the migration's run lock", migration)
        assert card["controller_pid"] == migration.proc.pid
        migration.kill()
        killed = time.monotonic()
        wait_for(lambda: lock_holder(fresh_db) is None, "the killed run's lock to go", timeout=30)
        released_after = time.monotonic() - killed
    finally:
        blocker.close()
        migration.close()
    print(f"lock released {released_after:.2f} s after the kill")
    rerun = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path / "again")})
    assert rerun.returncode == 0, playbook_output(rerun)
    assert card["run_id"] not in rerun.stdout
    assert query(fresh_db, "SELECT count(*) FROM migration_ledger.history WHERE status = 'succeeded' "
                           "AND direction = 'apply'")[0][0] == 6
    assert lock_holder(fresh_db) is None


def test_clone_into_a_database_being_migrated(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """clone.yml holds its staging target's run lock: while a migration runs there, the clone is
    refused, naming it, and the staging database is left as it was (not replaced)."""
    from helpers import clone_database, drop_database
    from rehearsal_helpers import out_of, run_with_inventory, two_host_inventory

    staging = clone_database(fresh_db, fresh_db["dbname"] + "_stg")
    blocker = blocked_in_phase2(staging)
    migration = Background(MIGRATE, staging, {"phase": "all", **PATIENT, **out_dirs_in(tmp_path / "m")},
                           tmp_path / "m")
    try:
        card = wait_for(lambda: lock_holder(staging), "the migration's run lock", migration)
        wait_for(lambda: query(staging, "SELECT to_regclass('migration_ledger.history') IS NOT NULL")[0][0]
                 and query(staging, "SELECT count(*) FROM migration_ledger.history WHERE phase = '2'")[0][0],
                 "phase 2 to start", migration)
        before = untouched(staging)
        oid = query(staging, "SELECT oid FROM pg_database WHERE datname = current_database()")
        result = run_with_inventory("playbooks/clone.yml", two_host_inventory(fresh_db, staging))
        text = out_of(result)
        assert result.returncode != 0, text
        assert f"is locked by another run: migrate.yml run {card['run_id']}" in text, text
        assert query(staging, "SELECT oid FROM pg_database WHERE datname = current_database()") == oid
        assert snapshot_diff(before, untouched(staging)) == []
        assert migration.running()
    finally:
        blocker.close()
        migration.close()
        drop_database(staging)
