"""What drains the transition's queue between phase 3 and complete.yml (docs/transition.md, "What
drains the queue"): the worker (playbooks/drain.yml) under today's application's traffic, killed
mid-call and started again by its supervisor's command, one per database; status.yml, the watch
and Prometheus showing the queue's real depth and age; check mode; and pg_cron (Debian's 1.4,
preloaded in a cluster of its own) scheduled by phase 3, draining, unscheduled by a rollback and
by complete.yml."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    REPO_ROOT,
    clone_database,
    connect,
    db_snapshot,
    drop_database,
    make_cluster_tempdir,
    pgcluster,
    playbook_output,
    query,
    run_playbook,
    snapshot_diff,
)
from transition_helpers import OldApplication, inconsistent, sync_leftovers

DRAIN = "playbooks/drain.yml"
ENTRY = "ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain"
SCALE = 50  # the template's (conftest.TEMPLATE_SCALE)


def drain_vars(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"drain_method": "worker", "drain_state_dir": str(tmp_path / "drain"),
            "drain_cron_file": str(tmp_path / "cron-pgmigrate-drain"), "drain_cron_user": getpass.getuser(),
            "migration_report_dir": str(tmp_path / "reports"), **more}


def said(result: subprocess.CompletedProcess[str]) -> str:
    """A run's output with its lines unwrapped (the callback folds long messages)."""
    return " ".join(result.stdout.split())


def worker_file(tmp_path: Path, suffix: str, db: dict[str, Any] | None = None) -> Path:
    """The worker's file (.json, .state.json, .log): named by the inventory host (testdb) and a
    digest of the database's address; with db, that database's, else the only one there is."""
    named = sorted((tmp_path / "drain").glob(f"testdb-*{suffix}"))
    named = [f for f in named if f.name.count(".") == suffix.count(".")]
    if db is not None:
        named = [f for f in named if f.with_name(f.name[:-len(suffix)] + ".json").exists()
                 and json.loads(f.with_name(f.name[:-len(suffix)] + ".json").read_text())["connection"]["db_name"]
                 == db["dbname"]]
    assert len(named) <= 1, named
    return named[0] if named else tmp_path / "drain" / f"testdb-none{suffix}"


def worker_pid(tmp_path: Path, db: dict[str, Any] | None = None) -> int | None:
    state = worker_file(tmp_path, ".state.json", db)
    return json.loads(state.read_text()).get("pid") if state.exists() else None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (a child of this process killed, not yet reaped) is dead.
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().split(") ")[1][0] != "Z"


@pytest.fixture
def drained_db(migrated_db: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A migrated database (the transition open) whose drain worker this test starts; whatever
    worker the test started is stopped after it (by its pid, from its state file)."""
    yield migrated_db
    for state in (tmp_path / "drain").glob("*.state.json"):
        pid = json.loads(state.read_text()).get("pid")
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)


def start(db: dict[str, Any], tmp_path: Path, **more: Any) -> subprocess.CompletedProcess[str]:
    result = run_playbook(DRAIN, db, {**drain_vars(tmp_path, **more), "drain_state": "started"})
    assert result.returncode == 0, playbook_output(result)
    return result


def queue(db: dict[str, Any]) -> tuple[int, float]:
    depth, age = query(db, "SELECT depth, oldest_age_s FROM migration_ledger.transition_queue_state()")[0]
    return int(depth), float(age)


def wait_drained(db: dict[str, Any], timeout_s: float) -> float:
    """Seconds until the queue is empty; fails after timeout_s."""
    started = time.monotonic()
    while queue(db)[0]:
        assert time.monotonic() - started < timeout_s, f"the queue did not drain in {timeout_s:g} s: {queue(db)}"
        time.sleep(0.1)
    return time.monotonic() - started


def install(db: dict[str, Any], n: int) -> list[str]:
    """n installations as today's application records them (tools/bench/pgbench/old_app_install.sql),
    in one transaction: n entries queued at once. Their ids."""
    rows = query(db, f"""INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
                         SELECT md5('module-' || (g %% 40))::uuid, md5('client-' || (1 + g %% {SCALE}))::uuid,
                                now(), 'installed'
                           FROM generate_series(1, %s) g RETURNING id::text""", (n,))
    return [r[0] for r in rows]


class AgeSampler(threading.Thread):
    """The oldest entry's age every 100 ms while today's application runs."""

    def __init__(self, db: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.db, self.ages, self.stop = db, [], threading.Event()

    def run(self) -> None:
        conn = connect(self.db)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute("SELECT oldest_age_s FROM migration_ledger.transition_queue_state()")
                    self.ages.append(float(cur.fetchone()[0]))
                    time.sleep(0.1)
        finally:
            conn.close()


def events_per_installation(db: dict[str, Any], ids: list[str]) -> dict[int, int]:
    """{number of module_installed events: installations with that many}, for `ids`."""
    rows = query(db, """
        SELECT n, count(*) FROM (
            SELECT i.id, (SELECT count(*) FROM integration_events e
                           WHERE e.correlation_id = i.id AND e.event_type = 'module_installed') AS n
              FROM module_installations i WHERE i.id = ANY (%s::uuid[])) x GROUP BY n""", (ids,))
    return {int(n): int(c) for n, c in rows}


def test_the_worker_drains_under_traffic_and_keeps_the_age_low(drained_db: dict[str, Any], tmp_path: Path) -> None:
    first = start(drained_db, tmp_path)
    assert "started the drain worker" in said(first), playbook_output(first)
    cron = (tmp_path / "cron-pgmigrate-drain").read_text()
    assert f"{ENTRY} ensure" in cron and drained_db["password"] not in cron
    pid = worker_pid(tmp_path)
    assert alive(pid)
    # Credentials never on a command line: the worker's argv names only its configuration file.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert not any(drained_db["password"].encode() in a for a in argv)
    config = worker_file(tmp_path, ".json")
    assert config.stat().st_mode & 0o777 == 0o600
    log = worker_file(tmp_path, ".log").read_text()
    assert drained_db["password"] not in log

    sampler = AgeSampler(drained_db)
    # PGMIGRATE_DRAIN_TEST_RATE: another arrival rate, for docs/benchmarks.md's figures.
    app = OldApplication(drained_db, SCALE, tmp_path, rate=int(os.environ.get("PGMIGRATE_DRAIN_TEST_RATE", "100")),
                         clients=4)
    sampler.start()
    time.sleep(20)
    done = app.stop()
    stopped = time.monotonic()
    to_zero = wait_drained(drained_db, 60)
    sampler.stop.set()
    sampler.join()
    ages = sorted(sampler.ages)
    p99 = ages[int(0.99 * (len(ages) - 1))]
    print(f"\ntransactions {done['processed']}, failed {done['failed']}; oldest entry's age p50 "
          f"{statistics.median(ages):.3f} s, p99 {p99:.3f} s, max {ages[-1]:.3f} s over {len(ages)} samples; "
          f"drained to zero {time.monotonic() - stopped:.2f} s after the traffic stopped ({to_zero:.2f} s of polling)")
    assert done["failed"] == 0, done["errors"]
    state = json.loads(worker_file(tmp_path, ".state.json").read_text())
    assert state["pid"] == pid and state["status"] == "running" and state["applied"] > 0, state
    # Nothing draining, the oldest entry would be as old as the traffic (20 s) by its end.
    assert ages[-1] < 10, ages[-10:]
    assert inconsistent(drained_db) == {}

    status = run_playbook("playbooks/status.yml", drained_db)
    assert status.returncode == 0, playbook_output(status)
    assert "drained by the worker pgmigrate-drain" in said(status) and f"pid {pid}" in said(status)

    stopped_run = run_playbook(DRAIN, drained_db, {**drain_vars(tmp_path), "drain_state": "stopped"})
    assert stopped_run.returncode == 0, playbook_output(stopped_run)
    assert not alive(pid) and not config.exists()
    crontab = tmp_path / "cron-pgmigrate-drain"
    assert "pgmigrate transition drain" not in (crontab.read_text() if crontab.exists() else "")


def test_a_killed_worker_loses_nothing_applies_nothing_twice_and_cron_starts_it_again(
        drained_db: dict[str, Any], tmp_path: Path) -> None:
    start(drained_db, tmp_path, drain_batch=200)
    pid = worker_pid(tmp_path)
    ids = install(drained_db, 4000)
    # Kill it while its call applies a batch (its session active in transition_drain), and its
    # server session with it, as a crash of both would: the call's transaction is rolled back.
    # (The worker killed alone, its server session finishes the one statement and commits it.)
    deadline = time.monotonic() + 30
    while True:
        rows = query(drained_db, """SELECT pid FROM pg_stat_activity
                                     WHERE application_name LIKE 'pgmigrate-drain%%' AND state = 'active'
                                       AND query LIKE '%%transition_drain%%'""")
        if rows:
            os.kill(pid, signal.SIGKILL)
            query(drained_db, "SELECT pg_terminate_backend(%s)", (rows[0][0],))
            break
        assert time.monotonic() < deadline, "the worker never applied a batch"
        time.sleep(0.005)
    time.sleep(0.5)
    depth_after_kill = queue(drained_db)[0]
    assert depth_after_kill > 0
    time.sleep(1)
    assert not alive(pid) and queue(drained_db)[0] == depth_after_kill  # nothing drains it now

    # The supervisor's command, as cron runs it every minute.
    line = next(entry for entry in (tmp_path / "cron-pgmigrate-drain").read_text().splitlines()
                if ENTRY in entry)
    command = line.split(f"{getpass.getuser()} ", 1)[1]
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=60)
    restarted = worker_pid(tmp_path)
    assert restarted != pid and alive(restarted)
    wait_drained(drained_db, 120)
    # Each installation its one module_installed event: the killed batch was rolled back whole
    # and applied again, nothing twice.
    assert events_per_installation(drained_db, ids) == {1: 4000}
    assert inconsistent(drained_db) == {}
    # Running the supervisor again while it drains changes nothing.
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=60)
    assert worker_pid(tmp_path) == restarted


def test_one_worker_per_database(drained_db: dict[str, Any], tmp_path: Path) -> None:
    start(drained_db, tmp_path)
    pid = worker_pid(tmp_path)
    again = start(drained_db, tmp_path)
    assert "already drained" in said(again) and worker_pid(tmp_path) == pid
    # A second worker started by hand on the same configuration refuses: the lock is held.
    second = subprocess.run([sys.executable, "-m", ENTRY, "run", str(worker_file(tmp_path, ".json"))],
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "collections")},
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "another worker drains this database: pgmigrate-drain" in second.stdout
    assert alive(pid) and worker_pid(tmp_path) == pid  # the refused one left the state file alone


def test_two_databases_named_alike_get_a_worker_each(drained_db: dict[str, Any], tmp_path: Path) -> None:
    """Staging's and production's inventories may both call their database testdb: each database
    gets its own worker, configuration and cron entry on the controller, and stopping one leaves
    the other draining."""
    other = clone_database({k: v for k, v in drained_db.items() if k != "reports"}, f"test_{uuid.uuid4().hex[:12]}")
    pids: list[int | None] = []
    try:
        start(drained_db, tmp_path)
        start(other, tmp_path)
        pids = [worker_pid(tmp_path, drained_db), worker_pid(tmp_path, other)]
        assert all(alive(pid) for pid in pids) and pids[0] != pids[1], pids
        cron = (tmp_path / "cron-pgmigrate-drain").read_text()
        assert cron.count(f"{ENTRY} ensure") == 2, cron

        stopped = run_playbook(DRAIN, other, {**drain_vars(tmp_path), "drain_state": "stopped"})
        assert stopped.returncode == 0, playbook_output(stopped)
        assert not alive(pids[1]) and alive(pids[0])
        assert worker_pid(tmp_path, drained_db) == pids[0]
        cron = (tmp_path / "cron-pgmigrate-drain").read_text()
        assert cron.count(f"{ENTRY} ensure") == 1 and worker_file(tmp_path, ".json").name in cron, cron
        ids = install(drained_db, 200)
        wait_drained(drained_db, 60)
        assert events_per_installation(drained_db, ids) == {1: 200}
    finally:
        for pid in pids[1:]:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        drop_database(other)


def test_phase_3_starts_the_drain_before_its_backfill(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """What drains the queue starts as soon as the transition opens, before the first batch: the
    deferred work of the backfill's minutes (under traffic, tens of them) does not wait for
    phase 3's end (docs/benchmarks.md, run 19)."""
    try:
        result = run_playbook("playbooks/migrate.yml", fresh_db, {**drain_vars(tmp_path), "phase": "all"})
        assert result.returncode == 0, playbook_output(result)
        out = result.stdout
        started = out.index("TASK [Start what drains the transition's queue, beside the backfill]")
        assert out.index("started the drain worker", started) < out.index("TASK [phase3_data : Link overrides")
        pid = worker_pid(tmp_path)
        assert alive(pid)
        ids = install(fresh_db, 100)
        wait_drained(fresh_db, 60)
        assert events_per_installation(fresh_db, ids) == {1: 100}
        assert inconsistent(fresh_db) == {}
    finally:
        pid = worker_pid(tmp_path)
        if alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_check_mode_tells_the_truth(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    before = db_snapshot(migrated_db)
    would = run_playbook(DRAIN, migrated_db, {**drain_vars(tmp_path), "drain_state": "started"}, check=True)
    assert would.returncode == 0, playbook_output(would)
    assert "would start a drain worker" in said(would)
    assert not (worker_file(tmp_path, ".json")).exists() and worker_pid(tmp_path) is None
    assert not (tmp_path / "cron-pgmigrate-drain").exists()
    assert snapshot_diff(before, db_snapshot(migrated_db)) == []


def test_status_watch_and_prometheus_show_the_queue(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    """Nothing drains (the suite's drain_method none): the queue's real depth and age, loudly."""
    install(migrated_db, 7)
    time.sleep(2.5)
    depth, age = queue(migrated_db)
    assert depth == 7 and age >= 2.5
    textfiles = tmp_path / "textfiles"
    status = run_playbook("playbooks/status.yml", migrated_db)
    assert status.returncode == 0, playbook_output(status)
    assert "queue depth 7, oldest entry" in said(status)
    assert "NOTHING DRAINS THE TRANSITION" in said(status) and "QUEUE: 7 entries wait" in said(status)

    shown = run_playbook(DRAIN, migrated_db, {**drain_vars(tmp_path, drain_method="none"),
                                              "migration_prometheus_textfile_dir": str(textfiles)})
    assert shown.returncode == 0, playbook_output(shown)
    prom = (textfiles / "pgmigrate_testdb_drain.prom").read_text()
    assert "pgmigrate_transition_queue_depth{" in prom and "} 7" in prom.split("pgmigrate_transition_queue_depth{")[1]
    assert "pgmigrate_transition_queue_drained{" in prom

    watch = run_playbook("playbooks/watch.yml", migrated_db, {
        "migration_report_dir": str(tmp_path / "reports"), "watch_queue_age_alert_s": 1,
        "watch_plots": False, "migration_prometheus_textfile_dir": str(textfiles)})
    assert watch.returncode == 0, playbook_output(watch)
    metrics, alerts = query(migrated_db, """SELECT metrics, alerts FROM migration_ledger.watch_samples
                                             ORDER BY id DESC LIMIT 1""")[0]
    assert metrics["transition_queue_depth"] == 7 and metrics["transition_queue_age_s"] >= 2.5
    assert metrics["transition_queue_drained"] == 0
    behind = [a for a in alerts if a["metric"] == "transition_queue_age_s"]
    assert behind and behind[0]["severity"] == "critical", alerts  # nothing drains it
    assert "queue is behind: its oldest entry waits" in behind[0]["message"]
    watch_prom = (textfiles / "pgmigrate_testdb_watch.prom").read_text()
    assert "pgmigrate_transition_queue_age_s{" in watch_prom


# -- pg_cron -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cron_cluster() -> Iterator[dict[str, Any]]:
    """A cluster of its own with Debian's pg_cron preloaded, its jobs run in database `agency`."""
    base = make_cluster_tempdir("pytest-pgcron-")
    datadir = base / "data"
    try:
        info = pgcluster.start_cluster(datadir, password=f"pytest-{uuid.uuid4().hex[:12]}")
        try:
            info = pgcluster.enable_pg_cron(info, "agency")
        except pgcluster.PgClusterError as exc:
            pytest.skip(str(exc))
        pgcluster.seed_database(info, "agency", 20)
        yield {**{k: info[k] for k in ("host", "port", "user", "password")}, "dbname": "agency"}
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)


def cron_jobs(db: dict[str, Any]) -> list[tuple[Any, ...]]:
    return query(db, "SELECT jobid, schedule, command FROM cron.job WHERE jobname = 'pgmigrate_transition_drain'")


def test_pg_cron_drains_and_complete_and_rollback_unschedule_it(cron_cluster: dict[str, Any], tmp_path: Path) -> None:
    db = cron_cluster
    query(db, "CREATE EXTENSION IF NOT EXISTS pg_cron")
    base = {"migration_report_dir": str(tmp_path / "reports"), "migration_backup_dir": str(tmp_path / "backups"),
            "drain_method": "auto", "drain_state_dir": str(tmp_path / "drain")}
    migrated = run_playbook("playbooks/migrate.yml", db, {**base, "phase": "all"})
    assert migrated.returncode == 0, playbook_output(migrated)
    assert "scheduled pg_cron job pgmigrate_transition_drain (* * * * *)" in said(migrated)
    jobs = cron_jobs(db)
    assert len(jobs) == 1 and jobs[0][1] == "* * * * *", jobs  # Debian's 1.4: by the minute
    assert query(db, """SELECT count(*) FROM migration_ledger.created_objects
                         WHERE kind = 'cron_job' AND name = 'pgmigrate_transition_drain'""")[0][0] == 1
    assert not (worker_file(tmp_path, ".json")).exists()  # no worker where pg_cron drains
    again = run_playbook(DRAIN, db, {**base, "drain_state": "started"})
    assert again.returncode == 0 and "already scheduled" in said(again), playbook_output(again)
    assert cron_jobs(db) == jobs

    ids = install(db, 50)
    # Queued with the installations. The job's first run starts at the minute after it was
    # scheduled and lasts until just before the next: once a minute has turned since migrate.yml
    # (a loaded machine), a run is under way and applies them at once, so 0 is as right as 50.
    assert queue(db)[0] in (0, 50)
    # One run a minute, each draining until just before the next: within about 70 s.
    waited = wait_drained(db, 75)
    assert query(db, """SELECT count(*) FROM integration_events WHERE event_type = 'module_installed'
                          AND correlation_id = ANY (%s::uuid[])""", (ids,))[0][0] == 50
    print(f"\npg_cron 1.4 drained 50 entries {waited:.1f} s after they were queued")
    status = run_playbook("playbooks/status.yml", db)
    assert status.returncode == 0 and f"drained by pg_cron job {jobs[0][0]} (* * * * *" in said(status), \
        playbook_output(status)

    rolled = run_playbook("playbooks/rollback.yml", db, {**base, "phase": "all"})
    assert rolled.returncode == 0, playbook_output(rolled)
    assert cron_jobs(db) == [] and sync_leftovers(db) == []

    migrated = run_playbook("playbooks/migrate.yml", db, {**base, "phase": "all"})
    assert migrated.returncode == 0, playbook_output(migrated)
    assert len(cron_jobs(db)) == 1
    completed = run_playbook("playbooks/complete.yml", db, base)
    assert completed.returncode == 0, playbook_output(completed)
    assert "unscheduled the pg_cron job" in said(completed)
    assert cron_jobs(db) == []
    assert query(db, "SELECT to_regproc('migration_ledger.transition_drain_cron_loop') IS NULL")[0][0]
