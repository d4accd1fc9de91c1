# What drains the transition's queue for the days between phase 3 and complete.yml
# (docs/transition.md, "What drains the queue"). The sync defers what an installation or a
# listing change derives in other rows into migration_ledger.transition_queue;
# migration_ledger.transition_drain(limit) applies the oldest entries in the caller's
# transaction. Something has to call it all the time:
#
#   pg_cron  where the migrated database has the extension (Supabase, RDS): a job named
#            CRON_JOB calls the procedure migration_ledger.transition_drain_cron_loop, which
#            drains in short transactions (COMMIT after each call) with a pause between calls,
#            until just before the next run is due; pg_cron 1.5+ schedules it every second, 1.4
#            only every minute, so there one run lasts about a minute.
#   worker   otherwise: a detached Python process on the controller (run_worker), started and
#            supervised by playbooks/drain.yml (a cron entry runs `ensure` every minute and starts
#            it again when it died). It holds a session advisory lock (DRAIN_KEY) on the database,
#            so only one ever drains it, yields under the migration's throttle, and exits when the
#            transition closes.
#
# queue_read() is the one read of the queue and of what drains it: status.yml (pgmigrate_info),
# the watch, the Prometheus metrics, the briefing, the migration's drain (pgmigrate_queue) and the
# backfill's check mode take it from here (queue_state: its first half).
#
# The worker's configuration file holds the connection (password included): written 0600 into a
# 0700 directory, never passed on a command line, never logged. This file runs as
#   python -m ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain run|ensure CONFIG
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    LEDGER_SCHEMA,
    MigrationError,
    connect,
)

try:
    import psycopg2
except ImportError:  # pragma: no cover - connect() says what to install
    psycopg2 = None

ENTRY = "ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain"
# 'pgmdrain' in ASCII: the worker's session advisory lock, one per database (the run lock's key
# is 'pgmigrat', pgmigrate_runlock.RUNLOCK_KEY).
DRAIN_KEY = 0x70676D647261696E
APP_NAME = "pgmigrate-drain"
CRON_JOB = "pgmigrate_transition_drain"
CRON_PROCEDURE = f"{LEDGER_SCHEMA}.transition_drain_cron_loop"
CREATED_KIND = "cron_job"
# What the worker waits between two calls when the last one emptied the queue: an entry waits at
# most this long plus one call before it is applied.
# A worker that cannot reach the database for reconnect_for_s exits (the supervisor starts it again
# within a minute of the database being back); one whose database is gone exits at once.
DEFAULTS: dict[str, Any] = {"batch": 500, "idle_ms": 100, "statement_timeout_ms": 10000,
                            "transition_check_s": 5.0, "heartbeat_s": 1.0, "reconnect_for_s": 600.0}
REFUSED = 3  # the worker's exit status when another one holds the database's lock

_LOCK_HOLDER_SQL = f"""
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.backend_start,
       a.state_change AS heartbeat_at,
       round(extract(epoch FROM clock_timestamp() - a.state_change)::numeric, 1)::float AS heartbeat_age_s
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = {DRAIN_KEY >> 32} AND l.objid = {DRAIN_KEY & 0xFFFFFFFF} AND l.objsubid = 1
"""


def _one(cur, sql: str, args: Any = None) -> Any:
    cur.execute(sql, args)
    row = cur.fetchone()
    return row[0] if row else None


def _dicts(cur, sql: str, args: Any = None) -> list[dict[str, Any]]:
    cur.execute(sql, args)
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def transition_open(cur) -> bool:
    """Whether the latest transition phase 3 opened is still open."""
    if not _one(cur, "SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.transition",)):
        return False
    return bool(_one(cur, f"""SELECT completed_at IS NULL AND rolled_back_at IS NULL
                                FROM {LEDGER_SCHEMA}.transition ORDER BY id DESC LIMIT 1"""))


STATE_FUNCTION = f"{LEDGER_SCHEMA}.transition_queue_state()"
DRAIN_FUNCTION = f"{LEDGER_SCHEMA}.transition_drain(integer)"
# What `deferred` (status.yml) holds when the ledger has no queue to read: every field present,
# so that a pipeline reading status.yml's JSON finds the same keys either way.
DEFERRED_FIELDS = ("depth", "oldest_age_s", "drained_by")


def queue_present(cur) -> bool:
    return bool(_one(cur, "SELECT to_regprocedure(%s) IS NOT NULL AND to_regprocedure(%s) IS NOT NULL",
                     (STATE_FUNCTION, DRAIN_FUNCTION)))


def pg_cron_version(cur) -> str | None:
    """pg_cron's version when the extension is installed in this database, else None (a job
    can only be seen and scheduled from the database cron.database_name names)."""
    return _one(cur, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def seconds_schedule(version: str) -> bool:
    """pg_cron 1.5 and later schedule by the second ('1 seconds'); before, by the minute."""
    return _version_tuple(version) >= (1, 5)


def cron_job(cur) -> dict[str, Any] | None:
    """The drain's pg_cron job in this database, with its latest run, or None."""
    if not pg_cron_version(cur):
        return None
    jobs = _dicts(cur, "SELECT jobid, schedule, command, active, username FROM cron.job WHERE jobname = %s",
                  (CRON_JOB,))
    if not jobs:
        return None
    job = jobs[0]
    if _one(cur, "SELECT to_regclass('cron.job_run_details') IS NOT NULL"):
        runs = _dicts(cur, """SELECT status, start_time, end_time, return_message FROM cron.job_run_details
                               WHERE jobid = %s ORDER BY runid DESC LIMIT 1""", (job["jobid"],))
        if runs:
            job["last_run"] = runs[0]
    return job


def queue_read(conn) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one read of the queue (status.yml, the watch, Prometheus, the briefing, the drain and
    the backfill's check mode all take it from here), read-only. Returns (state, deferred).

    state     present   the queue exists (phase 3 opened a transition that defers work)
              open      the transition is open
              depth, oldest_enqueued_at, oldest_age_s
              drained_by  {"kind": "pg_cron"|"worker"|"nothing", ...}: the pg_cron job, or the
                        worker's session (its pid on the server, its application_name naming the
                        controller and the process, its heartbeat: when its last call ended)
              says      one line for an operator
    deferred  status.yml's `deferred`: available (the ledger has transition_queue_state()), and
              whatever that function returns, its columns as they are (DEFERRED_FIELDS None when
              it returns none of them); drained_by the drain's, where the queue is present.
    """
    with conn.cursor() as cur:
        state: dict[str, Any] = {"present": queue_present(cur), "open": transition_open(cur)}
        reported: Any = None
        available = bool(_one(cur, "SELECT to_regprocedure(%s) IS NOT NULL", (STATE_FUNCTION,)))
        if available:
            reported = _one(cur, f"SELECT to_jsonb(q) FROM {STATE_FUNCTION} AS q")
        if state["present"]:
            columns = reported if isinstance(reported, dict) else {}
            state.update(depth=int(columns.get("depth") or 0), oldest_enqueued_at=columns.get("oldest_enqueued_at"),
                         oldest_age_s=round(float(columns.get("oldest_age_s") or 0.0), 3))
        job = cron_job(cur)
        workers = _dicts(cur, _LOCK_HOLDER_SQL)
    conn.rollback()
    if job:
        drained_by = {"kind": "pg_cron", "jobid": job["jobid"], "schedule": job["schedule"],
                      "active": job["active"], "last_run": job.get("last_run")}
    elif workers:
        w = workers[0]
        drained_by = {"kind": "worker", "server_pid": w["pid"], "application_name": w["application_name"],
                      "client_addr": w["client_addr"], "started_at": w["backend_start"],
                      "heartbeat_at": w["heartbeat_at"], "heartbeat_age_s": w["heartbeat_age_s"]}
    else:
        drained_by = {"kind": "nothing"}
    state["drained_by"] = _jsonable(drained_by)
    state["says"] = describe(state)
    deferred: dict[str, Any] = {"available": available, **dict.fromkeys(DEFERRED_FIELDS)}
    if isinstance(reported, dict):
        deferred.update(reported)
    elif reported is not None:
        deferred["value"] = reported
    if state["present"]:
        deferred["drained_by"] = state["drained_by"]
    return state, _jsonable(deferred)


def queue_state(conn) -> dict[str, Any]:
    """The queue's state (queue_read's first half)."""
    return queue_read(conn)[0]


def describe(state: dict[str, Any]) -> str:
    if not state.get("present"):
        return "no transition queue (phase 3 has not deferred work to one)"
    queue = (f"queue depth {state['depth']}, oldest entry {state['oldest_age_s']:g} s old")
    by = state["drained_by"]
    if by["kind"] == "pg_cron":
        job = f"pg_cron job {by['jobid']} ({by['schedule']}{'' if by['active'] else ', INACTIVE'})"
        last = by.get("last_run") or {}
        if last:
            job += f", last run {last.get('status')} at {last.get('start_time')}"
        return f"{queue}; drained by {job}"
    if by["kind"] == "worker":
        return (f"{queue}; drained by the worker {by['application_name']} (server pid {by['server_pid']}, "
                f"heartbeat {by['heartbeat_age_s']:g} s ago)")
    if not state.get("open"):
        return f"{queue}; nothing drains it (the transition is closed)"
    return (f"{queue}; NOTHING DRAINS IT: the queue grows. Start the drain: "
            "ansible-playbook playbooks/drain.yml -e drain_state=started")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return value


# -- pg_cron --------------------------------------------------------------------------------------
def cron_command(version: str, limit: int, pause_ms: int) -> tuple[str, str]:
    """(schedule, command) of the job for this pg_cron version."""
    if seconds_schedule(version):
        # Every second, each run draining for up to 0.9 s: a run is never started while the
        # previous one still runs, so one is always about to start.
        return "1 seconds", f"CALL {CRON_PROCEDURE}(0.9, false, {int(limit)}, {int(pause_ms)})"
    return "* * * * *", f"CALL {CRON_PROCEDURE}(0, true, {int(limit)}, {int(pause_ms)})"


def cron_schedule(conn, limit: int, pause_ms: int, check: bool, procedure_sql: str) -> dict[str, Any]:
    """Schedule the job (once: a job of that name already there is left alone) calling the
    procedure procedure_sql creates (files/sql/transition/drain_cron.sql), and record it in
    migration_ledger.created_objects so complete.yml and every rollback unschedule it."""
    with conn.cursor() as cur:
        version = pg_cron_version(cur)
        if not version:
            raise MigrationError("pg_cron is not installed in this database (CREATE EXTENSION pg_cron in the "
                                 "database cron.database_name names, or drain_method: worker)")
        schedule, command = cron_command(version, limit, pause_ms)
        job = cron_job(cur)
    conn.rollback()
    result = {"changed": False, "version": version, "schedule": schedule, "command": command}
    if job:
        result["jobid"] = job["jobid"]
        return result
    result["changed"] = True
    if check:
        return result
    with conn.cursor() as cur:
        cur.execute(procedure_sql)
        cur.execute(f"""INSERT INTO {LEDGER_SCHEMA}.created_objects (kind, name, phase) VALUES (%s, %s, '3')
                        ON CONFLICT (kind, name) DO NOTHING""", (CREATED_KIND, CRON_JOB))
        result["jobid"] = _one(cur, "SELECT cron.schedule(%s, %s, %s)", (CRON_JOB, schedule, command))
    conn.commit()
    return result


def cron_unschedule(conn, check: bool) -> dict[str, Any]:
    """Unschedule the job and drop its procedure; idempotent, and nothing at all where pg_cron
    is absent and nothing was created."""
    with conn.cursor() as cur:
        job = cron_job(cur)
        procedure = _one(cur, "SELECT to_regproc(%s) IS NOT NULL", (CRON_PROCEDURE,))
        ledger = _one(cur, "SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.created_objects",))
        recorded = ledger and _one(cur, f"SELECT count(*) FROM {LEDGER_SCHEMA}.created_objects "
                                   "WHERE kind = %s AND name = %s", (CREATED_KIND, CRON_JOB))
    conn.rollback()
    changed = bool(job or procedure or recorded)
    if changed and not check:
        with conn.cursor() as cur:
            if job:
                cur.execute("SELECT cron.unschedule(%s::bigint)", (job["jobid"],))
            # A run in progress holds the procedure: it ends within a second (1.5+) or a minute
            # (1.4), and ends at once once the transition is closed.
            cur.execute(f"DROP PROCEDURE IF EXISTS {CRON_PROCEDURE}(double precision, boolean, integer, integer)")
            if recorded:
                cur.execute(f"DELETE FROM {LEDGER_SCHEMA}.created_objects WHERE kind = %s AND name = %s",
                            (CREATED_KIND, CRON_JOB))
        conn.commit()
    return {"changed": changed, "jobid": job["jobid"] if job else None}


# -- the worker ---------------------------------------------------------------------------------
def read_config(path: str) -> dict[str, Any]:
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise MigrationError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); it holds the "
                             "database password: chmod 600 it")
    with open(path, encoding="utf-8") as handle:
        cfg = json.load(handle)
    cfg["options"] = {**DEFAULTS, **(cfg.get("options") or {})}
    return cfg


def write_private(path: str, text: str) -> None:
    """Write `text` to `path`, readable by its owner only, atomically."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_state(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def process_alive(pid: int, config_path: str | None = None) -> bool:
    """Whether `pid` runs, and (given config_path) is a drain worker of that configuration: a
    recycled pid is never taken for the worker."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OverflowError):
        return False
    if config_path is None:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    return os.fsencode(config_path) in argv and any(a.endswith(b"pgmigrate_drain") for a in argv)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    # The worker's log is its stdout, which its supervisor appends to a file (a command-line
    # program, not a module: no module.log to call).
    sys.stdout.write(f"{_now()} {APP_NAME}[{os.getpid()}] {message}\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, cfg: dict[str, Any], config_path: str) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.opts = cfg["options"]
        self.params = cfg["connection"]
        self.state_path = cfg["state_file"]
        self.stop = threading.Event()
        self.conn = None
        self.throttle = None
        self.started = _now()
        self.applied = 0
        self.calls = 0
        self.last_error: str | None = None
        self.last_heartbeat = 0.0
        self.last_logged = time.monotonic()
        self.applied_logged = 0
        # application_name (at most 63 bytes) names the controller and the process: what
        # status.yml shows as the worker. It starts with "pgmigrate", so the throttle leaves the
        # worker's own session out of the application's active sessions.
        self.app_name = f"{APP_NAME} {socket.gethostname()[:30]} pid {os.getpid()}"[:63]

    def heartbeat(self, status: str, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last_heartbeat < self.opts["heartbeat_s"]:
            return
        self.last_heartbeat = now
        state = {"pid": os.getpid(), "status": status, "host": socket.gethostname(), "started_at": self.started,
                 "heartbeat_at": _now(), "applied": self.applied, "calls": self.calls,
                 "last_error": self.last_error, "config": self.config_path, **extra}
        if self.throttle is not None:
            summary = self.throttle.summary()
            state["throttled_s"] = summary.get("throttled_s")
            state["throttle_by_signal_s"] = summary.get("by_signal_s")
        write_private(self.state_path, json.dumps(state, default=str) + "\n")

    def _connect(self) -> bool:
        """Connect and take the database's drain lock; False when another worker holds it."""
        conn = connect(self.params, self.app_name)
        conn.autocommit = True
        with conn.cursor() as cur:
            # jit off: a call applies a few hundred entries; compiling its plans costs more than
            # running them (a drain of an empty queue took 1.2 s, all of it JIT, on PostgreSQL 15).
            cur.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', '50ms', false), "
                        "set_config('jit', 'off', false)", (f"{int(self.opts['statement_timeout_ms'])}ms",))
            if not _one(cur, "SELECT pg_try_advisory_lock(%s)", (DRAIN_KEY,)):
                holder = _dicts(cur, _LOCK_HOLDER_SQL)
                conn.close()
                who = (f"{holder[0]['application_name']} (server pid {holder[0]['pid']})" if holder
                       else "another session")
                _log(f"another worker drains this database: {who}; exiting")
                return False
        # Autocommit: each call is one statement in one round trip, committed as it ends; no row
        # lock of the queue or of the overrides it relinks is held across a round trip.
        self.conn = conn
        return True

    def _throttle(self):
        from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import Throttle

        # The drain lives for days: a long pause under critical load is waited out, never a
        # reason to stop (the watch alerts on the queue's age meanwhile).
        given = {**(self.cfg.get("throttle") or {}), "max_pause_s": 10 ** 9}
        return Throttle(self.params, given, [], "the transition's drain")

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_args: self.stop.set())
        if not self._connect():
            return REFUSED
        _log(f"draining {self.params.get('db_name')} on {self.params.get('db_host')}:{self.params.get('db_port')} "
             f"(batch {self.opts['batch']}, idle pause {self.opts['idle_ms']} ms)")
        self.heartbeat("running", force=True)
        checked = 0.0
        delays = iter(())
        lost_since = None
        while not self.stop.is_set():
            try:
                if self.conn is None:
                    if not self._connect():
                        return REFUSED
                    _log("reconnected")
                if time.monotonic() - checked >= self.opts["transition_check_s"]:
                    with self.conn.cursor() as cur:
                        still_open = transition_open(cur) and queue_present(cur)
                    checked = time.monotonic()
                    if not still_open:
                        _log(f"the transition is closed: exiting after applying {self.applied} entries")
                        self.heartbeat("exited", force=True, reason="transition closed")
                        return 0
                share = 1.0
                if self.calls and self.throttle is not None and self._pending:
                    share = self.throttle.wait()
                limit = max(1, int(self.opts["batch"] * share))
                with self.conn.cursor() as cur:
                    applied = int(_one(cur, f"SELECT {LEDGER_SCHEMA}.transition_drain(%s)", (limit,)) or 0)
                self.calls += 1
                self.applied += applied
                self._pending = applied >= limit
                if self.throttle is None and self._pending:
                    self.throttle = self._throttle()
                delays = iter(())
                lost_since = None
                self.last_error = None
                self.heartbeat("running")
                self._log_minute()
                if not self._pending:
                    self.stop.wait(self.opts["idle_ms"] / 1000.0)
            except (MigrationError, psycopg2.Error) as exc:
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                lost = isinstance(exc, MigrationError | psycopg2.OperationalError | psycopg2.InterfaceError) \
                    and (self.conn is None or self.conn.closed)
                if self.conn is not None and self.conn.closed:
                    self.conn = None
                if self.conn is None:
                    lost_since = lost_since or time.monotonic()
                    if "does not exist" in self.last_error \
                            or time.monotonic() - lost_since > self.opts["reconnect_for_s"]:
                        _log(f"cannot reach the database ({self.last_error}); exiting, the supervisor starts "
                             "a worker again once it is back")
                        self.heartbeat("exited", force=True, reason=self.last_error)
                        return 1
                delay = next(delays, None)
                if delay is None:
                    delays = iter([0.5, 1, 2, 5, 10, 15] + [30] * 10 ** 6)
                    delay = next(delays)
                _log(f"{'connection lost' if lost else 'call failed'} ({self.last_error}); again in {delay:g} s")
                self.heartbeat("retrying", force=True)
                self.stop.wait(delay)
        if self.conn is not None and not self.conn.closed:
            self.conn.close()  # ends the session and its lock
        if self.throttle is not None:
            self.throttle.close()
        _log(f"stopped after applying {self.applied} entries")
        self.heartbeat("stopped", force=True)
        return 0

    _pending = False

    def _log_minute(self) -> None:
        if time.monotonic() - self.last_logged >= 60:
            _log(f"applied {self.applied - self.applied_logged} entries in the last minute ({self.applied} in all)")
            self.last_logged, self.applied_logged = time.monotonic(), self.applied


def run_worker(config_path: str) -> int:
    cfg = read_config(config_path)
    return Worker(cfg, config_path).run()


def _pythonpath(cfg: dict[str, Any]) -> str:
    parts = [cfg.get("collections_path") or "", os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def ensure(config_path: str, wait_s: float = 15.0) -> dict[str, Any]:
    """The supervisor's one step (the cron entry, and drain.yml's start): nothing when a worker
    drains the database already, when a pg_cron job does, or when no transition is open;
    otherwise start a detached worker and wait until it holds the lock (or has failed)."""
    cfg = read_config(config_path)
    conn = connect(cfg["connection"], "pgmigrate-drain-supervisor")
    try:
        state = queue_state(conn)
    finally:
        conn.close()
    if not state["open"] or not state["present"]:
        return {"changed": False, "action": "none", "msg": "no open transition with a queue: nothing to drain",
                "queue": state}
    if state["drained_by"]["kind"] != "nothing":
        return {"changed": False, "action": "none", "msg": f"already drained: {state['says']}", "queue": state}
    log_path = cfg["log_file"]
    os.makedirs(os.path.dirname(log_path) or ".", mode=0o700, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": _pythonpath(cfg)}
    for secret in ("PGPASSWORD", "PGPASSFILE"):
        env.pop(secret, None)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([cfg.get("python") or sys.executable, "-m", ENTRY, "run", config_path],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                                start_new_session=True, cwd=os.path.dirname(config_path) or ".", env=env)
    finally:
        os.close(log)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        rc = proc.poll()
        seen = read_state(cfg["state_file"])
        if seen.get("pid") == proc.pid and seen.get("status") in ("running", "exited"):
            return {"changed": True, "action": "started", "pid": proc.pid,
                    "msg": f"started the drain worker, pid {proc.pid} (log {log_path})"}
        if rc is not None:
            if rc == REFUSED:
                return {"changed": False, "action": "none", "pid": proc.pid,
                        "msg": f"another worker took the database's drain lock first (see {log_path})"}
            raise MigrationError(f"the drain worker exited at once (status {rc}); see {log_path}")
        time.sleep(0.1)
    raise MigrationError(f"the drain worker (pid {proc.pid}) did not take the database's drain lock within "
                         f"{wait_s:g} s; see {log_path}")


def stop(config_path: str | None, state_file: str, check: bool, wait_s: float = 20.0) -> dict[str, Any]:
    """Stop this controller's worker (SIGTERM: it finishes its call, commits, closes)."""
    seen = read_state(state_file)
    pid = seen.get("pid")
    if not pid or not process_alive(int(pid), config_path):
        return {"changed": False, "msg": "no drain worker of this controller runs"}
    if check:
        return {"changed": True, "pid": pid, "msg": f"would stop the drain worker, pid {pid}"}
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and process_alive(int(pid), config_path):
        time.sleep(0.1)
    if process_alive(int(pid), config_path):
        # What a worker killed mid-call leaves is its transaction, rolled back by the server.
        os.kill(int(pid), signal.SIGKILL)
    return {"changed": True, "pid": pid, "msg": f"stopped the drain worker, pid {pid}"}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("run", "ensure"):
        sys.stderr.write(f"usage: python -m {ENTRY} run|ensure CONFIG\n")
        return 2
    try:
        if argv[0] == "run":
            return run_worker(argv[1])
        result = ensure(argv[1])
        if result["changed"]:
            _log(result["msg"])
        return 0
    except MigrationError as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
