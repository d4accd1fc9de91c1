"""The throttle (plugins/module_utils/pgmigrate_throttle.py): the migration's batches yield to the
application. Real sessions make real load - lock waiters on client_app_overrides - and the
throttle slows down, pauses, and goes on by itself once the load ends; a batch reaching its
target is cut; and through the playbook, phase 3 and the rollback record how long they throttled
and why (ledger, report).

Timing on a loaded machine: every wait polls with a generous deadline; nothing asserts how fast
the machine is, only what the throttle decided.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from helpers import (
    REPO_ROOT,
    connect,
    make_cluster_tempdir,
    pgcluster,
    playbook_output,
    plugin,
    query,
    run_playbook,
)
from prometheus_helpers import prometheus_fixture  # noqa: F401 - the fixture

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

    def __init__(self, throttle: Any, idle: bool = False) -> None:
        super().__init__(daemon=True)
        self.throttle = throttle
        self.idle = idle  # between batches the loop says it is idle: its time is no batch
        self.shares: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.shares.append((time.monotonic(), self.throttle.wait()))
                if self.idle:
                    self.throttle.idle()
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


# HT-036's probe, as the migration role passes it (its manifest's monitor.probe).
HT036_PROBE = (REPO_ROOT / "migrations" / "ht036" / "monitor" / "probe.sql").read_text().strip()
# Every signal's limits out of reach: each test below brings its own back, so a busy machine's
# noise in the others cannot decide for them.
QUIET = {"probe_sql": HT036_PROBE, "probe_max_ms": 60000, "probe_critical_ms": 120000, "active_sessions_max": 1000,
         "active_sessions_critical": 1000, "lock_waiters_max": 1000, "lock_waiters_critical": 1000,
         "replication_lag_max_s": 1000, "replication_lag_critical_s": 1000,
         "cpu_sessions_max": 1000, "cpu_sessions_critical": 1000, "app_cpu_sessions_critical": 1000,
         "duty_cycle": 1, "check_interval_ms": 50, "slow_pause_ms": 20}


def run_through(db: dict[str, Any], opts: dict[str, Any], signal: str | set[str],
                steps: list[tuple[Callable[[], None], int, str]], idle: bool = False) -> dict[str, Any]:
    """The batches at full speed, then each step's action and the throttle level it must bring:
    1, a batch runs at half its target; 2, no batch runs; 0 (the load ended), a batch runs at
    full speed again. The summary must name `signal` alone (or the signals of a set); it is
    returned."""
    throttle = throttle_mod.Throttle(params(db), {**QUIET, **opts}, ["public.client_app_overrides"],
                                     "the test's batches")
    batches = Batches(throttle, idle)
    batches.start()
    try:
        until(lambda: len(batches.shares) > 20, "the batches run at full speed before any load")
        assert set(batches.since(0)) == {1.0}, "no load: no batch was slowed down"
        for action, level, what in steps:
            action()
            until(lambda level=level: throttle.level == level, what)
            reached = time.monotonic()
            if level == 2:
                time.sleep(0.3)  # a batch already past wait() when the pause began may still finish
                paused_at = time.monotonic()
                time.sleep(0.5)
                assert batches.since(paused_at) == [], "no batch runs while paused"
            else:
                share = 0.5 if level == 1 else 1.0
                until(lambda share=share, reached=reached: share in batches.since(reached),
                      f"a batch runs at {share:g} of its target")
            assert batches.is_alive() and batches.error is None
    finally:
        batches.stop.set()
        batches.join(timeout=DEADLINE_S)
        summary = throttle.summary()
        throttle.close()
    assert batches.error is None, batches.error
    signals = signal if isinstance(signal, set) else {signal}
    assert set(summary["by_signal_s"]) == signals, summary
    states = [e["state"] for e in summary["episodes"]]
    assert states[-1] == "running", states
    assert all(f"{s} " in summary["line"].split("because of ", 1)[1] for s in signals), summary["line"]
    return summary


def test_throttle_slows_down_pauses_and_goes_on_when_the_load_ends(fresh_db: dict[str, Any],
                                                                    waiters: Waiters) -> None:
    """Real lock waiters on client_app_overrides: two (over max, under critical) slow the
    batches down, four pause them; the load ended, they go on by themselves."""
    def add(n: int) -> Callable[[], None]:
        def action() -> None:
            waiters.add(n)
            until(lambda: waiters.waiting() >= len(waiters.threads), f"{len(waiters.threads)} sessions wait")
        return action

    def release() -> None:
        waiters.release()
        assert waiters.errors == []

    summary = run_through(fresh_db, {"lock_waiters_max": 1, "lock_waiters_critical": 3}, "lock_waiters",
                          [(add(2), 1, "the throttle slows down"), (add(2), 2, "the throttle pauses"),
                           (release, 0, "the throttle lets the batches go on")])
    assert summary["paused_s"] >= 0.4, summary
    assert summary["slowed_s"] > 0, summary
    states = [e["state"] for e in summary["episodes"]]
    assert "slowed down" in states and "paused" in states, states
    paused = next(e for e in summary["episodes"] if e["state"] == "paused")
    assert paused["because"]["lock_waiters"]["value"] >= 4 and paused["because"]["lock_waiters"]["limit"] == 3
    assert summary["baseline"]["probe_ms"] >= 0 and summary["worst"]["lock_waiters"] >= 4


class Sleepers:
    """Sessions each running one long statement (`state = 'active'` in pg_stat_activity), under
    an application_name of their own; cancelled together."""

    def __init__(self, db: dict[str, Any]) -> None:
        self.db = db
        self.conns: list[Any] = []
        self.threads: list[threading.Thread] = []

    def add(self, n: int, sql: str = "SELECT pg_sleep(60)", app: str = "the-application") -> None:
        for _ in range(n):
            conn = connect(self.db)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET application_name = %s", (app,))
            self.conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn, sql), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _run(conn: Any, sql: str) -> None:
        with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
            cur.execute(sql)

    def running(self, app: str = "the-application") -> int:
        return int(query(self.db, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                  "AND application_name = %s", (app,))[0][0])

    def stop(self) -> None:
        for conn in self.conns:
            conn.cancel()
        for thread in self.threads:
            thread.join(timeout=DEADLINE_S)
        for conn in self.conns:
            conn.close()
        self.conns, self.threads = [], []


def test_throttle_counts_the_applications_running_statements_not_its_own(fresh_db: dict[str, Any]) -> None:
    """Real sessions each running a statement: over active_sessions_max the batches slow down,
    over critical they pause, and they go on once the statements end. The migration's own
    sessions (application_name pgmigrate*) running statements meanwhile never count."""
    sleepers = Sleepers(fresh_db)
    try:
        sleepers.add(4, app="pgmigrate-backfill")
        until(lambda: sleepers.running("pgmigrate-backfill") == 4, "the migration's own sessions run")

        def load() -> None:
            sleepers.add(3)
            until(lambda: sleepers.running() == 3, "three application statements run")

        def more_load() -> None:
            sleepers.add(3)
            until(lambda: sleepers.running() == 6, "six application statements run")

        summary = run_through(fresh_db, {"active_sessions_max": 2, "active_sessions_critical": 5}, "active_sessions",
                              [(load, 1, "the throttle slows down"), (more_load, 2, "the throttle pauses"),
                               (sleepers.stop, 0, "the throttle lets the batches go on")])
        assert summary["slowed_s"] > 0 and summary["paused_s"] > 0, summary
    finally:
        sleepers.stop()


def test_throttle_pauses_while_the_applications_reads_wait(fresh_db: dict[str, Any]) -> None:
    """The probe is the application's read of clients and overrides: held up behind a real lock
    on client_app_overrides, it is slower than its critical limit (its own timeout cuts it
    there) and the batches pause; the lock released, they go on."""
    holder = connect(fresh_db)
    holder.autocommit = False

    def lock() -> None:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE client_app_overrides IN ACCESS EXCLUSIVE MODE")

    try:
        summary = run_through(fresh_db, {"probe_max_ms": 250, "probe_critical_ms": 500}, "probe",
                              [(lock, 2, "the throttle pauses while the probe waits for the lock"),
                               (holder.rollback, 0, "the throttle lets the batches go on")])
        assert summary["paused_s"] > 0, summary
    finally:
        holder.rollback()
        holder.close()


def test_throttle_waits_for_a_replica_that_falls_behind(tmp_path: Path) -> None:
    """A real streaming replica (pg_basebackup -R) whose replay is paused while the primary
    writes: its replay lag grows (pg_stat_replication), the batches slow down, then pause; replay
    resumed, the replica catches up and the batches go on by themselves. A login that may not
    read the lag is told so."""
    base = make_cluster_tempdir("pgm-replica-")
    primary = pgcluster.start_cluster(base / "primary")
    stop = threading.Event()
    writer: threading.Thread | None = None
    try:
        pgcluster.seed_database(primary, "agency", 30)
        replica = {**pgcluster.start_standby(primary, base / "standby"), "dbname": "agency"}
        source = {**primary, "dbname": "agency"}
        query(source, "CREATE TABLE wal_traffic (id bigserial PRIMARY KEY, filler text)")

        def write() -> None:
            # WAL keeps flowing, as the batches' own writes would: the replica keeps reporting
            # the replay position it is stuck at, and the primary sees its lag grow.
            conn = connect(source)
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("INSERT INTO wal_traffic (filler) SELECT repeat('x', 200) FROM generate_series(1, 20)")
                    time.sleep(0.02)
            conn.close()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        opts = {"replication_lag_max_s": 1, "replication_lag_critical_s": 3}
        summary = run_through(source, opts, "replication_lag", [
            (lambda: query(replica, "SELECT pg_wal_replay_pause()"), 1,
             "the throttle slows down as the replica falls behind"),
            (lambda: None, 2, "the throttle pauses once the lag is past critical"),
            (lambda: query(replica, "SELECT pg_wal_replay_resume()"), 0,
             "the batches go on once the replica caught up")])
        paused = next(e for e in summary["episodes"] if e["state"] == "paused")
        assert paused["because"]["replication_lag"]["value"] >= 3, paused
        assert summary["worst"]["replication_lag"] >= 3
        assert "unwatched" not in summary

        # A login that may not read the replica's lag (no pg_monitor, as on a managed database)
        # is told the batches do not wait for it; granted pg_monitor, they do.
        query(source, "CREATE ROLE batches LOGIN PASSWORD 'batches-pw'")
        query(source, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO batches")
        login = params({**source, "user": "batches", "password": "batches-pw"})
        hidden = throttle_mod.Throttle(login, {**QUIET, **opts}, ["public.client_app_overrides"], "the test's batches")
        told = hidden.summary()
        hidden.close()
        assert told["unwatched"] == ["replication_lag: 1 replica(s) attached whose lag this login may not read "
                                     "(GRANT pg_monitor TO it to have the batches wait for them)"], told
        assert "not watched: replication_lag" in told["line"]
        # The run's report says it under its throttle table.
        section = plugin("modules", "pgmigrate_report").throttle_section(
            [{"phase": "3", "direction": "apply", "details": {"throttle": {"backfill": told}}}])
        assert f"Not watched: {told['unwatched'][0]}." in section, section
        query(source, "GRANT pg_monitor TO batches")
        granted = throttle_mod.Throttle(login, {**QUIET, **opts}, ["public.client_app_overrides"], "the test's batches")
        assert "unwatched" not in granted.summary()
        granted.close()
    finally:
        stop.set()
        if writer is not None:
            writer.join(timeout=DEADLINE_S)
        for name in ("standby", "primary"):
            pgcluster.destroy_cluster(base / name)
        shutil.rmtree(base, ignore_errors=True)


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
    # Running statements against the cores (the default 2 here): + the cores, + twice the cores.
    assert limits["active_sessions"] == (4.0, 6.0)
    # A pool of 4 connections reaches its limits: over half busy slows down, all busy pauses
    # (2x the baseline + 4 and 4x + 16, the old limits, were out of its reach).
    pool = throttle_mod.derive_limits(throttle_mod.options({}), {"active_sessions": 0}, 2, 4)
    assert pool["active_sessions"] == (2.0, 3.0)
    assert pool["cpu_sessions"] == (2.0, 4.0) and pool["app_cpu_sessions"] == (2.0, 2.0)
    assert throttle_mod.derive_limits(throttle_mod.options({}), {"active_sessions": 1}, 8, 100)["active_sessions"] \
        == (9.0, 17.0)
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
              "migration_throttle_slow_pause_ms": 10, "migration_abort_degradation_pct": 100000,
              "migration_throttle_duty_cycle": 0.8}
    for phase in (1, 2):
        result = run_playbook("playbooks/migrate.yml", fresh_db, {"phase": phase, **dirs})
        assert result.returncode == 0, playbook_output(result)
    result = run_playbook("playbooks/migrate.yml", fresh_db, {"phase": 3, **dirs, **forced})
    assert result.returncode == 0, playbook_output(result)
    assert "Throttle: the batches throttled" in result.stdout and "because of probe" in result.stdout, \
        playbook_output(result)
    # Why, with the probe's worst reading and its limits.
    assert "Why, where the batches throttled longest:" in result.stdout, playbook_output(result)
    assert "against max 0.001 ms" in result.stdout, playbook_output(result)
    details = query(fresh_db, """SELECT details FROM migration_ledger.history
                                  WHERE phase = '3' AND direction = 'apply' ORDER BY id DESC LIMIT 1""")[0][0]
    for part in ("backfill", "inserts"):
        t = details["throttle"][part]
        assert float(t["throttled_s"]) > 0 and t["because"] == ["probe"], (part, t)
    chunk = details["throttle"]["backfill"]["chunks"][0]
    assert chunk["baseline"]["source"] == "phase 1's ledger record"
    # The role's variables reach the module: the duty cycle, the cores (the test cluster is local).
    # (a chunk's batches here may be one: a batch is counted at the next wait(), after it)
    assert chunk["duty_cycle"]["limit"] == 0.8, chunk["duty_cycle"]
    assert chunk["db_cpus"]["source"].startswith("this host's"), chunk["db_cpus"]
    assert chunk["limits"]["probe"]["max"] == 0.001
    assert "batches_cut" in details and int(details["batches_cancelled"]) == 0, details
    report = sorted(Path(dirs["migration_report_dir"]).glob("*-migrate-*.md"))[-1].read_text()
    assert "## Throttle" in report and "| 3 | apply | backfill batches |" in report, report
    why = next(line for line in report.splitlines() if line.startswith("- Phase 3 apply, backfill batches: "))
    assert "because of probe" in why and "against max 0.001 ms" in why, why

    rolled = run_playbook("playbooks/rollback.yml", fresh_db, {"phase": "data", **dirs, **forced})
    assert rolled.returncode == 0, playbook_output(rolled)
    details = query(fresh_db, """SELECT details FROM migration_ledger.history
                                  WHERE phase = '3' AND direction = 'rollback' ORDER BY id DESC LIMIT 1""")[0][0]
    t = details["batches"]["throttle"]
    assert t["throttled_s"] > 0 and "probe" in t["by_signal_s"], json.dumps(t)
    assert "the batches throttled" in details["summary"]


# A statement that keeps one core busy until cancelled: an aggregate over a set-returning
# function in the target list (streamed row by row, never materialised), running on CPU
# (state active, no wait event) the whole time.
BURN = "SELECT count(*) FROM (SELECT generate_series(1, 100000000000)) AS burn"


def test_throttle_slows_down_then_pauses_while_the_cpu_is_saturated(fresh_db: dict[str, Any]) -> None:
    """Real sessions burning CPU, as many as the cores the throttle found (this host's: the
    test cluster is local). The application's and one migration session together reach the
    cores: the batches slow down. The application's alone fill them: they pause. The burners
    cancelled, the batches go on at full size. The summary and the episodes say which signal,
    its value, whose sessions, and the limit."""
    cores = int(os.cpu_count() or 1)
    probe = throttle_mod.Throttle(params(fresh_db), QUIET, [], "the test's batches")
    found = probe.summary()["db_cpus"]
    probe.close()
    assert found["value"] == cores and found["source"].startswith("this host's (os.cpu_count()"), found
    burners = Sleepers(fresh_db)
    cpu_limits = {"cpu_sessions_max": 0, "cpu_sessions_critical": 0, "app_cpu_sessions_critical": 0}

    def on_cpu(app: str) -> int:
        return int(query(fresh_db, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                   "AND wait_event IS NULL AND application_name = %s", (app,))[0][0])

    def with_the_migration() -> None:
        # One of the migration's sessions (a backfill worker) and the application's on the
        # cores left: together they fill the cores.
        burners.add(1, BURN, app="pgmigrate-backfill")
        if cores > 1:
            burners.add(cores - 1, BURN)
        until(lambda: on_cpu("pgmigrate-backfill") == 1 and on_cpu("the-application") == cores - 1,
              "the burners run on CPU")

    def the_application_alone() -> None:
        burners.add(1, BURN)
        until(lambda: on_cpu("the-application") == cores, "the application's burners fill the cores")

    try:
        # The loop says it is idle between its (empty) batches: only the burners are on CPU.
        summary = run_through(fresh_db, cpu_limits, {"cpu_sessions", "app_cpu_sessions"},
                              [(with_the_migration, 1, "the throttle slows down"),
                               (the_application_alone, 2, "the throttle pauses"),
                               (burners.stop, 0, "the batches go on at full size")], idle=True)
    finally:
        burners.stop()
    assert summary["slowed_s"] > 0 and summary["paused_s"] > 0, summary
    assert summary["limits"]["cpu_sessions"] == {"max": cores, "critical": 2 * cores}
    assert summary["limits"]["app_cpu_sessions"]["critical"] == cores
    slowed = next(e for e in summary["episodes"] if e["state"] == "slowed down")
    assert slowed["because"]["cpu_sessions"]["limit"] == cores, slowed
    assert slowed["because"]["cpu_sessions"]["migration"] > 0, slowed
    paused = next(e for e in summary["episodes"] if e["state"] == "paused")
    assert paused["because"]["app_cpu_sessions"]["value"] >= cores, paused
    assert paused["because"]["app_cpu_sessions"]["limit"] == cores, paused
    assert summary["worst"]["app_cpu_sessions"] >= cores
    assert f"app_cpu_sessions {summary['by_signal_s']['app_cpu_sessions']:g} s (up to" in summary["line"]
    assert f"critical {cores:g})" in summary["line"], summary["line"]
    # The report's throttle section says why, with the values and the limits.
    section = "\n".join(plugin("modules", "pgmigrate_report").throttle_section(
        [{"phase": "3", "direction": "apply", "details": {"throttle": {"backfill": summary}}}]))
    assert "app_cpu_sessions" in section and f"against max {cores:g}" in section, section


def test_a_long_pause_names_the_cpu_and_whose_sessions_fill_it(fresh_db: dict[str, Any]) -> None:
    burners = Sleepers(fresh_db)
    try:
        burners.add(1, BURN)
        until(lambda: burners.running() == 1, "the burner runs")
        throttle = throttle_mod.Throttle(params(fresh_db), {**QUIET, "db_cpus": 1, "app_cpu_sessions_critical": 0,
                                                            "max_pause_s": 0.3}, [], "the test's batches")
        try:
            with pytest.raises(throttle_mod.MigrationError, match=(
                    r"paused for more than 0.3 s because app_cpu_sessions 1 \(application 1, migration 0\) "
                    r"at or over critical 1")):
                throttle.wait()
        finally:
            throttle.close()
    finally:
        burners.stop()


def test_the_cores_come_from_the_option_this_host_prometheus_or_a_stated_default(
        prometheus: dict[str, Any]) -> None:
    opts = throttle_mod.options({})
    assert throttle_mod.detect_cpus({**opts, "db_cpus": 16}, "db.example.internal")[:2] == \
        (16.0, "migration_throttle_db_cpus")
    for local in ("", "/var/run/postgresql", "localhost", "127.0.0.1", "::1"):
        assert throttle_mod.detect_cpus(opts, local)[0] == float(os.cpu_count() or 2), local
    cores, source, note = throttle_mod.detect_cpus(opts, "db.example.internal")
    assert cores == 2 and "set migration_throttle_db_cpus" in source and note is None
    # A real Prometheus answers the node-exporter query (here a constant: no node exporter runs).
    asked = {**opts, "prometheus_url": prometheus["url"], "db_cpus_query": "vector(6)"}
    assert throttle_mod.detect_cpus(asked, "db.example.internal")[:2] == (6.0, "Prometheus (vector(6))")
    # A query that gives nothing: the default, and the summary will say why.
    cores, _source, note = throttle_mod.detect_cpus(
        {**asked, "db_cpus_query": 'count(node_cpu_seconds_total{mode="idle"})'}, "db.example.internal")
    assert cores == 2 and note is not None and "returned nothing" in note, note


class Work:
    """The batches' real work: a CPU-bound statement on a session of the migration's."""

    def __init__(self, db: dict[str, Any]) -> None:
        self.conn = connect(db)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SET application_name = 'pgmigrate-backfill'")

    def batch(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM (SELECT generate_series(1, 200000)) AS batch")
            cur.fetchone()

    def close(self) -> None:
        self.conn.close()


def test_the_duty_cycle_caps_the_batches_share_whatever_the_signals_say(fresh_db: dict[str, Any]) -> None:
    """No signal over its limit; the duty cycle alone rests the loop after each batch in
    proportion to the batch: its own accounting shows the batches working at most the duty
    cycle's share of the time (rests / work = (1 - d) / d). Off (1), it never rests; and a loop
    that says it is idle between batches is owed no rest for its idle time."""
    work = Work(fresh_db)
    try:
        for duty, batches in ((0.25, 12), (1.0, 12)):
            throttle = throttle_mod.Throttle(params(fresh_db), {**QUIET, "duty_cycle": duty}, [], "the test's batches")
            try:
                for _batch in range(batches):
                    assert throttle.wait() == 1.0
                    work.batch()
                throttle.wait()
                summary = throttle.summary()
            finally:
                throttle.close()
            d = summary["duty_cycle"]
            assert d["limit"] == duty and d["batches"] == batches and d["work_s"] > 0, d
            if duty < 1:
                # The time the signals took counts towards the rest (the checks, here).
                assert d["rested_s"] > 0 and d["rested_s"] + d["waited_s"] >= d["work_s"] * (1 - duty) / duty * 0.99, d
                assert d["share"] <= duty + 0.005, d
                assert f"duty cycle {duty:g}: rested {d['rested_s']:g} s after {d['work_s']:g} s of batches" \
                    in summary["line"], summary["line"]
            else:
                assert d["rested_s"] == 0, d
                assert "duty cycle" not in summary["line"]
        throttle = throttle_mod.Throttle(params(fresh_db), {**QUIET, "duty_cycle": 0.5}, [], "the test's batches")
        try:
            throttle.wait()
            work.batch()
            throttle.idle()  # waiting for work, as a drain loop does between drains
            time.sleep(0.5)
            throttle.wait()
            d = throttle.summary()["duty_cycle"]
        finally:
            throttle.close()
        assert d["batches"] == 0 and d["work_s"] == 0 and d["rested_s"] == 0, d
    finally:
        work.close()
    with pytest.raises(throttle_mod.MigrationError, match="duty_cycle must be over 0 and at most 1"):
        throttle_mod.options({"duty_cycle": 0})
    with pytest.raises(throttle_mod.MigrationError, match="duty_cycle must be over 0 and at most 1"):
        throttle_mod.options({"duty_cycle": 1.5})


# The application's latency p95 in ms and its request rate, over a window short enough for a
# test (the role's defaults use a minute).
APP_LATENCY = "1000 * histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[4s])))"
APP_RATE = "sum(rate(http_requests_total[4s]))"


def prometheus_reads(url: str, promql: str) -> float | None:
    return plugin("module_utils", "pgmigrate_monitor").prometheus_query(url, promql, 2)["value"]


def test_throttle_yields_when_the_applications_own_latency_and_rate_say_it_falls_behind(
        fresh_db: dict[str, Any], prometheus: dict[str, Any]) -> None:
    """A real Prometheus scraping the application's exporter (a latency histogram and a request
    counter): its latency over its reading at the start by more than the max slows the batches
    down, by more than critical pauses them, back to normal they go on; its request rate
    collapsing pauses them too. A query that gives nothing is not watched, and said so."""
    exporter = prometheus["exporter"]
    exporter.set(latency_s=0.03, error_ratio=0.0, rate=20)
    until(lambda: (prometheus_reads(prometheus["url"], APP_LATENCY) or 0) > 0
          and abs((prometheus_reads(prometheus["url"], APP_RATE) or 0) - 20) < 2,
          "Prometheus has the application's healthy figures", deadline_s=60)
    app = {"prometheus_url": prometheus["url"], "prometheus_interval_s": 0.2, "app_latency_query": APP_LATENCY}

    def latency(seconds: float, p95_over: float | None = None, under: float | None = None) -> Callable[[], None]:
        def action() -> None:
            exporter.set(latency_s=seconds)
            until(lambda: (p95_over is None or (prometheus_reads(prometheus["url"], APP_LATENCY) or 0) > p95_over)
                  and (under is None or (prometheus_reads(prometheus["url"], APP_LATENCY) or 1e9) < under),
                  f"Prometheus sees the application answer in {seconds:g} s", deadline_s=60)
        return action

    # Healthy p95 47.5 ms (the 50 ms bucket): max 71.25 ms (+50%), critical 142.5 ms (+200%);
    # 80 ms answers read 97.5 ms, 300 ms answers 487.5 ms.
    summary = run_through(fresh_db, app, "app_latency", [
        (latency(0.08, p95_over=90), 1, "the throttle slows down as the application slows"),
        (latency(0.3, p95_over=400), 2, "the throttle pauses as the application falls behind"),
        (latency(0.03, under=50), 0, "the batches go on once the application is back")])
    assert summary["baseline"]["app_latency_ms"] == pytest.approx(47.5, abs=1), summary["baseline"]
    assert summary["limits"]["app_latency"] == {"max": pytest.approx(71.25, abs=1.5),
                                                "critical": pytest.approx(142.5, abs=3)}
    paused = next(e for e in summary["episodes"] if e["state"] == "paused")
    assert paused["because"]["app_latency"]["value"] > 142.5, paused
    assert "app_latency" in summary["line"] and " ms against max " in summary["line"], summary["line"]

    def rate(per_s: float) -> Callable[[], None]:
        def action() -> None:
            exporter.set(rate=per_s)
            until(lambda: abs((prometheus_reads(prometheus["url"], APP_RATE) or -100) - per_s) < 1.5,
                  f"Prometheus sees {per_s:g} requests/s", deadline_s=60)
        return action

    summary = run_through(fresh_db, {**app, "app_latency_query": "", "app_rate_query": APP_RATE},
                          "app_rate_drop", [(rate(3), 2, "the throttle pauses as the request rate collapses"),
                                            (rate(20), 0, "the batches go on once the requests come back")])
    paused = next(e for e in summary["episodes"] if e["state"] == "paused")
    assert paused["because"]["app_rate_drop"]["value"] > 70 and paused["because"]["app_rate_drop"]["limit"] == 70

    blind = throttle_mod.Throttle(params(fresh_db), {**QUIET, **app, "app_latency_query": "sum(rate(no_such[4s]))"},
                                  [], "the test's batches")
    told = blind.summary()
    blind.close()
    assert told["unwatched"] == ["app_latency: the query returned nothing (no such series, or no traffic in its "
                                 "window) (sum(rate(no_such[4s])))"], told
    assert "app_latency" not in told["limits"]
