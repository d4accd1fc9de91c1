"""The throttle (plugins/module_utils/pgmigrate_throttle.py): the migration's batches yield to the
application. Real sessions make real load - lock waiters on client_app_overrides - and the
throttle slows down, pauses, and goes on by itself once the load ends; a batch reaching its
target is cut; and through the playbook, phase 3 and the rollback record how long they throttled
and why (ledger, report).

Timing on a loaded machine: every wait polls with a generous deadline; nothing asserts how fast
the machine is, only what the throttle decided.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from helpers import connect, playbook_output, plugin, query, run_playbook

DEADLINE_S = 30.0
FAST_LOCK = {"lock_timeout_ms": 50, "lock_attempts": 60, "backoff_initial_ms": 50,
             "backoff_max_ms": 200, "statement_timeout_ms": 0}


throttle_mod = plugin("module_utils", "pgmigrate_throttle")


def params(db: dict[str, Any]) -> dict[str, Any]:
    return {"db_host": db["host"], "db_port": int(db["port"]), "db_name": db["dbname"],
            "db_user": db["user"], "db_password": db["password"]}


def until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline_s:g} s: {what}")
        time.sleep(0.02)


class Batches(threading.Thread):
    """A batch loop as the modules run it: throttle.wait() between batches (the batches here do
    nothing: what is measured is the throttle's word)."""

    def __init__(self, throttle: Any) -> None:
        super().__init__(daemon=True)
        self.throttle = throttle
        self.shares: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.shares.append((time.monotonic(), self.throttle.wait()))
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def since(self, t: float) -> list[float]:
        return [share for at, share in list(self.shares) if at >= t]


class Waiters:
    """One session holding a row lock on an override, and `n` application sessions waiting to
    update the same row (real lock waiters on client_app_overrides)."""

    def __init__(self, db: dict[str, Any]) -> None:
        self.db = db
        self.holder = connect(db)
        self.override = query(db, "SELECT id::text FROM client_app_overrides ORDER BY id LIMIT 1")[0][0]
        with self.holder.cursor() as cur:
            cur.execute("UPDATE client_app_overrides SET enabled = NOT enabled WHERE id = %s", (self.override,))
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def add(self, n: int) -> None:
        for _ in range(n):
            thread = threading.Thread(target=self._wait, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _wait(self) -> None:
        conn = connect(self.db)
        try:
            with conn.cursor() as cur:
                cur.execute("SET lock_timeout = '60s'")
                cur.execute("UPDATE client_app_overrides SET enabled = NOT enabled WHERE id = %s", (self.override,))
            conn.commit()
        except psycopg2.Error as exc:
            self.errors.append(str(exc))
        finally:
            conn.close()

    def waiting(self) -> int:
        return int(query(self.db, """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                                      WHERE NOT l.granted AND a.datname = current_database()""")[0][0])

    def release(self) -> None:
        self.holder.rollback()
        for thread in self.threads:
            thread.join(timeout=DEADLINE_S)
        self.holder.close()


@pytest.fixture
def waiters(fresh_db: dict[str, Any]) -> Iterator[Waiters]:
    w = Waiters(fresh_db)
    try:
        yield w
    finally:
        if not w.holder.closed:
            w.release()


def test_throttle_slows_down_pauses_and_goes_on_when_the_load_ends(fresh_db: dict[str, Any],
                                                                    waiters: Waiters) -> None:
    # Limits on lock waiters only: the probe and the active sessions are out of the way, so a
    # busy machine's noise cannot decide for them.
    opts = {"lock_waiters_max": 1, "lock_waiters_critical": 3, "probe_max_ms": 60000,
            "probe_critical_ms": 120000, "active_sessions_max": 1000, "active_sessions_critical": 1000,
            "check_interval_ms": 50, "slow_pause_ms": 20}
    throttle = throttle_mod.Throttle(params(fresh_db), opts, ["public.client_app_overrides"], "the test's batches")
    batches = Batches(throttle)
    batches.start()
    try:
        until(lambda: len(batches.shares) > 20, "the batches run at full speed before any load")
        assert set(batches.since(0)) == {1.0}, "no load: no batch was slowed down"

        # Two waiters: over max (1), under critical (3): the batches go on at half their target.
        waiters.add(2)
        until(lambda: waiters.waiting() >= 2, "two sessions wait for the override's row lock")
        until(lambda: throttle.level == 1, "the throttle slows down")
        slowed_at = time.monotonic()
        until(lambda: 0.5 in batches.since(slowed_at), "a batch runs at half its target")

        # Four waiters: over critical: the batches pause.
        waiters.add(2)
        until(lambda: waiters.waiting() >= 4, "four sessions wait")
        until(lambda: throttle.level == 2, "the throttle pauses")
        time.sleep(0.3)  # a batch already past wait() when the pause began may still finish
        paused_at = time.monotonic()
        time.sleep(0.5)
        assert batches.since(paused_at) == [], "no batch runs while paused"
        assert batches.is_alive() and batches.error is None

        # The load ends: the batches go on by themselves, at full speed again.
        waiters.release()
        assert waiters.errors == []
        released_at = time.monotonic()
        until(lambda: 1.0 in batches.since(released_at), "the batches go on at full speed")
    finally:
        batches.stop.set()
        batches.join(timeout=DEADLINE_S)
        summary = throttle.summary()
        throttle.close()
    assert batches.error is None, batches.error
    assert summary["paused_s"] >= 0.4, summary
    assert summary["slowed_s"] > 0, summary
    assert set(summary["by_signal_s"]) == {"lock_waiters"}, summary
    states = [e["state"] for e in summary["episodes"]]
    assert "slowed down" in states and "paused" in states and states[-1] == "running", states
    paused = next(e for e in summary["episodes"] if e["state"] == "paused")
    assert paused["because"]["lock_waiters"]["value"] >= 4 and paused["because"]["lock_waiters"]["limit"] == 3
    assert summary["baseline"]["probe_ms"] >= 0 and summary["worst"]["lock_waiters"] >= 4
    assert "because of lock_waiters" in summary["line"]


def test_a_long_pause_fails_with_what_to_do(fresh_db: dict[str, Any], waiters: Waiters) -> None:
    waiters.add(1)
    until(lambda: waiters.waiting() >= 1, "a session waits")
    throttle = throttle_mod.Throttle(params(fresh_db), {"lock_waiters_critical": 0.5, "lock_waiters_max": 0.1,
                                                        "check_interval_ms": 50, "max_pause_s": 0.5,
                                                        "probe_max_ms": 60000, "probe_critical_ms": 120000},
                                     ["public.client_app_overrides"], "the test's batches")
    try:
        with pytest.raises(throttle_mod.MigrationError, match=r"paused for more than 0.5 s because lock_waiters 1"):
            throttle.wait()
    finally:
        throttle.close()


def test_bad_throttle_options_are_refused() -> None:
    with pytest.raises(throttle_mod.MigrationError, match="unknown throttle option.*probe_max"):
        throttle_mod.options({"probe_max": 3})
    with pytest.raises(throttle_mod.MigrationError, match="slow_pause_ms must be a number"):
        throttle_mod.options({"slow_pause_ms": "soon"})
    with pytest.raises(throttle_mod.MigrationError, match="must not be negative"):
        throttle_mod.options({"lock_waiters_max": -1})


def test_limits_derive_from_the_baseline() -> None:
    limits = throttle_mod.derive_limits(throttle_mod.options({}),
                                        {"probe_ms": 4.0, "active_sessions": 2, "lock_waiters": 0})
    assert limits["probe"] == (8.0, 34.0)  # max(2x, +3 ms), max(6x, +30 ms)
    assert limits["active_sessions"] == (8.0, 24.0)
    assert limits["lock_waiters"] == (2.0, 8.0)
    assert throttle_mod.derive_limits(throttle_mod.options({"probe_max_ms": 50}), {"probe_ms": 4.0})["probe"][0] == 50


def test_a_batch_reaching_its_target_is_cut_and_retried_smaller(fresh_db: dict[str, Any]) -> None:
    conn = connect(fresh_db)
    try:
        with pytest.raises(throttle_mod.BatchCut):
            throttle_mod.run_capped(conn, "SELECT pg_sleep(2)", None, FAST_LOCK, 100)
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE  # rolled back
        # One round trip, its own implicit transaction: the row lock is gone once it returns.
        override = query(fresh_db, "SELECT id::text FROM client_app_overrides ORDER BY id LIMIT 1")[0][0]
        row, tries = throttle_mod.run_capped(
            conn, "UPDATE client_app_overrides SET enabled = NOT enabled WHERE id = %s RETURNING 1 AS one",
            (override,), FAST_LOCK, 1000)
        assert row == {"one": 1} and tries == 0
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert query(fresh_db, "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND pid = %s",
                     (conn.get_backend_pid(),))[0][0] == 0
        throttle_mod.end_batches(conn)
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "0"
    finally:
        conn.close()
    sizer = throttle_mod.BatchSizer(1000, 100, 20000, 25)
    sizer.was_cut()
    assert sizer.size == 250 and sizer.cap_ms() == 25
    sizer.done(0.001, waited=False)  # far under its aim: at most doubled
    assert sizer.size == 500
    sizer.done(0.015, waited=False, share=0.5)  # slowed down: aimed at half of 0.6 x 25 ms
    assert sizer.size == 250
    sizer.size = 100
    sizer.was_cut()  # the smallest batch reached the cap: the next gets twice the cap
    assert sizer.size == 100 and sizer.cap_ms() == 50


class Canceller(threading.Thread):
    """Sends pg_cancel_backend to `pid` whenever it runs a pg_sleep, `times` times at most."""

    def __init__(self, db: dict[str, Any], pid: int, times: int) -> None:
        super().__init__(daemon=True)
        self.db, self.pid, self.times, self.sent = db, pid, times, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while self.sent < self.times and not self.stop.is_set():
            if query(self.db, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s "
                              "AND state = 'active' AND query LIKE '%%pg_sleep%%'", (self.pid,)):
                self.sent += 1
                time.sleep(0.05)  # the cancelled statement ends before the next look
            time.sleep(0.01)


def test_a_cancelled_batch_runs_again_and_a_persistent_cancel_stops_it(fresh_db: dict[str, Any]) -> None:
    """A batch cancelled "due to user request" (another session's pg_cancel_backend, or a
    statement_timeout PostgreSQL delivered late, to the session's next statement) was rolled
    back whole: it runs again. A cancel that keeps coming fails the batch with what to do."""
    conn = connect(fresh_db)
    try:
        once = Canceller(fresh_db, conn.get_backend_pid(), times=1)
        once.start()
        tally: dict[str, int] = {}
        row, tries = throttle_mod.run_capped(conn, "SELECT pg_sleep(0.3) IS NULL AS slept", None, FAST_LOCK, 5000,
                                             tally)
        once.join(timeout=DEADLINE_S)
        # counted apart from lock retries: the module result says the batch ran again
        assert once.sent == 1 and row == {"slept": False} and tries == 0 and tally == {"cancelled": 1}
        always = Canceller(fresh_db, conn.get_backend_pid(), times=100)
        always.start()
        try:
            with pytest.raises(throttle_mod.MigrationError, match=(
                    r"cancelled 4 times in a row \(canceling statement due to user request\).*"
                    r"pg_cancel_backend.*rolled back whole.*Ctrl-C")):
                throttle_mod.run_capped(conn, "SELECT pg_sleep(5)", None, FAST_LOCK, 10000)
        finally:
            always.stop.set()
            always.join(timeout=DEADLINE_S)
        assert always.sent >= 4  # (a cancel sent as one ended may land on nothing)
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        conn.close()


def test_phase3_and_its_rollback_record_how_long_they_throttled(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """Through the playbook: a probe limit no probe can meet keeps phase 3's batches and inserts
    slowed down; the ledger, the summary line and the report say so, and the rollback's batches
    too."""
    dirs = {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}
    forced = {"migration_throttle_probe_max_ms": 0.001, "migration_throttle_check_interval_ms": 20,
              "migration_throttle_slow_pause_ms": 10, "migration_abort_degradation_pct": 100000}
    for phase in (1, 2):
        result = run_playbook("playbooks/migrate.yml", fresh_db, {"phase": phase, **dirs})
        assert result.returncode == 0, playbook_output(result)
    result = run_playbook("playbooks/migrate.yml", fresh_db, {"phase": 3, **dirs, **forced})
    assert result.returncode == 0, playbook_output(result)
    assert "Throttle: the batches throttled" in result.stdout and "because of probe" in result.stdout, \
        playbook_output(result)
    details = query(fresh_db, """SELECT details FROM migration_ledger.history
                                  WHERE phase = '3' AND direction = 'apply' ORDER BY id DESC LIMIT 1""")[0][0]
    for part in ("backfill", "inserts"):
        t = details["throttle"][part]
        assert float(t["throttled_s"]) > 0 and t["because"] == ["probe"], (part, t)
    chunk = details["throttle"]["backfill"]["chunks"][0]
    assert chunk["baseline"]["source"] == "phase 1's ledger record"
    assert chunk["limits"]["probe"]["max"] == 0.001
    assert "batches_cut" in details and int(details["batches_cancelled"]) == 0, details
    report = sorted(Path(dirs["migration_report_dir"]).glob("*-migrate-*.md"))[-1].read_text()
    assert "## Throttle" in report and "| 3 | apply | backfill batches |" in report, report

    rolled = run_playbook("playbooks/rollback.yml", fresh_db, {"phase": "data", **dirs, **forced})
    assert rolled.returncode == 0, playbook_output(rolled)
    details = query(fresh_db, """SELECT details FROM migration_ledger.history
                                  WHERE phase = '3' AND direction = 'rollback' ORDER BY id DESC LIMIT 1""")[0][0]
    t = details["batches"]["throttle"]
    assert t["throttled_s"] > 0 and "probe" in t["by_signal_s"], json.dumps(t)
    assert "the batches throttled" in details["summary"]
