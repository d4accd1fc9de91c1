# The migration yields to the application (gh-ost's --max-load / --critical-load): between two
# batches, the backfill, phase 3's inserts and the rollback's batches ask Throttle.wait() how the
# database is doing, from live signals, against the pre-migration baseline phase 1's ledger record
# keeps:
#   probe             the monitoring probe's latency (the application's reads of overrides);
#   active_sessions   sessions running a statement, the migration's own left out;
#   lock_waiters      sessions waiting for a lock while writing the tables the batches write;
#   replication_lag   the replicas' replay lag (none attached: no signal; attached but hidden
#                     from this login: said in the summary, not watched);
#   cpu_sessions      sessions running on CPU (active, no wait event), the application's plus the
#                     migration's, against the cores the database has: a database short of CPU
#                     queues its statements without a lock or a slow probe to show for it;
#   app_cpu_sessions  the application's sessions on CPU alone: at the cores, it has them all;
#   app_latency, app_rate_drop
#                     the application's own latency and request rate, from Prometheus when a
#                     prometheus_url is given (the application falls behind before the database
#                     shows it).
# Whatever the signals say, a duty cycle caps the migration's share of the wall time (gh-ost's
# --nice-ratio): after each batch, each loop rests in proportion to the batch's duration.
# Over a signal's max the batches slow down (a pause between them, their target halved); over its
# critical limit they pause until every signal is back under critical, then go on slowly until
# it is under max. One implementation for every batch loop; its summary (how long it slowed
# down and paused, and why) goes into the module's result, the ledger and the report.
#
# The batches themselves hold their row locks no longer than their target: each runs under a
# statement_timeout of the target (BatchSizer, run_capped); one cut short is rolled back, and
# the next is a quarter of its size.
from __future__ import annotations

import collections
import ipaddress
import os
import statistics
import threading
import time
from typing import Any

from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    LEDGER_SCHEMA,
    RETRYABLE,
    MigrationError,
    backoff_delays,
    connect,
    sqlstate,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import prometheus_query

try:
    import psycopg2
    import psycopg2.extensions
except ImportError:  # pragma: no cover - connect() says what to install
    psycopg2 = None

# The module option (type dict) every batch-running module takes; the migration role builds it
# from the migration_throttle_* variables (roles/migration/vars/main.yml: __migration_throttle).
# A limit of 0 is derived from the baseline (derive_limits).
THROTTLE_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    # The application's tables the batches write (the migration's manifest, throttle.tables):
    # the lock_waiters signal counts the sessions waiting for a lock on them, besides the
    # engine's own tables each module names.
    "tables": [],
    "probe_sql": "",
    "probe_max_ms": 0.0,
    "probe_critical_ms": 0.0,
    "active_sessions_max": 0.0,
    "active_sessions_critical": 0.0,
    "lock_waiters_max": 0.0,
    "lock_waiters_critical": 0.0,
    "replication_lag_max_s": 5.0,
    "replication_lag_critical_s": 30.0,
    "check_interval_ms": 500,
    "slow_pause_ms": 50,
    "max_pause_s": 900.0,
    # The cores the database has; 0: detected (detect_cpus). Sessions on CPU: the application's
    # plus the migration's slow the batches down at cpu_sessions_max (0: the cores) and pause
    # them at cpu_sessions_critical (0: twice the cores); the application's alone pause them at
    # app_cpu_sessions_critical (0: the cores).
    "db_cpus": 0.0,
    "db_cpus_query": "",
    "cpu_sessions_max": 0.0,
    "cpu_sessions_critical": 0.0,
    "app_cpu_sessions_critical": 0.0,
    # The most of the wall time each batch loop may work: after a batch of t seconds it rests
    # t x (1 - duty_cycle) / duty_cycle, less what the signals made it wait. 1: no cap.
    "duty_cycle": 0.5,
    # The application's own signals from Prometheus (none without prometheus_url, or without a
    # query): its latency in ms over its reading at the start by more than the max and critical
    # percentages (or over the _ms limits when given), its request rate dropped by more than the
    # rate percentages. Read at most every prometheus_interval_s (a scrape is no fresher).
    "prometheus_url": "",
    "prometheus_timeout_s": 2.0,
    "prometheus_interval_s": 5.0,
    "app_latency_query": "",
    "app_rate_query": "",
    "app_latency_max_pct": 50.0,
    "app_latency_critical_pct": 200.0,
    "app_latency_max_ms": 0.0,
    "app_latency_critical_ms": 0.0,
    "app_rate_drop_max_pct": 30.0,
    "app_rate_drop_critical_pct": 70.0,
}
THROTTLE_ARG = {"type": "dict", "default": {}}
SIGNALS = ("probe", "active_sessions", "lock_waiters", "replication_lag", "cpu_sessions", "app_cpu_sessions",
           "app_latency", "app_rate_drop")
# Signals reached AT their limit: the cores are full when as many sessions run on CPU as there
# are cores. The others are over theirs when past it.
AT_LIMIT = ("cpu_sessions", "app_cpu_sessions")
# Without migration_throttle_db_cpus, a database not on this host and no Prometheus to ask: the
# cores of the smallest managed instances (2 vCPUs). A bigger database is throttled sooner than
# it needs to be, never later.
DEFAULT_DB_CPUS = 2.0
# The sessions on CPU are the mean of this many checks: one sample is an instant, several a load.
CPU_WINDOW = 3
# The application's latency limits are at least this many ms over its reading at the start: a
# few ms of noise on a fast endpoint is no degradation.
APP_LATENCY_DELTA = (5.0, 20.0)
# Below this many requests per second at the start, a rate's drop says nothing: not watched.
APP_RATE_MIN = 1.0
# How a limit of 0 is derived from the baseline: max(factor x baseline, baseline + delta).
PROBE_MAX = (2.0, 3.0)
PROBE_CRITICAL = (6.0, 30.0)
STATEMENT_TIMEOUT = "57014"  # query_canceled: a timeout, or a cancel request
# A batch cancelled "due to user request" is run again this many times in a row before the
# chunk fails: PostgreSQL can deliver a statement_timeout that fired as one statement ended to
# the session's next one, where it reads as a cancel request (it ended bench-scale's 1,000,000
# clients at chunk 13 of 36); a cancel that keeps coming is somebody's, and is obeyed.
CANCEL_RETRIES = 3
OWN_SESSIONS = "pgmigrate%"


def options(given: dict | None) -> dict[str, Any]:
    """The throttle options with defaults; an unknown key or a negative limit is refused."""
    given = {k: v for k, v in (given or {}).items() if v is not None and v != ""}
    unknown = sorted(set(given) - set(THROTTLE_DEFAULTS))
    if unknown:
        raise MigrationError(f"unknown throttle option(s) {', '.join(unknown)}: the known ones are "
                             f"{', '.join(THROTTLE_DEFAULTS)} (migration_throttle_* variables)")
    opts = {**THROTTLE_DEFAULTS, **given}
    if not isinstance(opts["tables"], list | tuple) or not all(isinstance(t, str) for t in opts["tables"]):
        raise MigrationError(f"throttle option tables must be a list of table names, not {opts['tables']!r} "
                             "(the migration's manifest: throttle.tables)")
    opts["tables"] = list(opts["tables"])
    for key, default in THROTTLE_DEFAULTS.items():
        if isinstance(default, bool):
            opts[key] = str(opts[key]).lower() in ("1", "true", "yes", "on") \
                if not isinstance(opts[key], bool) else opts[key]
        elif isinstance(default, int | float):
            try:
                opts[key] = type(default)(float(opts[key]))
            except (TypeError, ValueError):
                raise MigrationError(f"throttle option {key} must be a number, not {opts[key]!r} "
                                     "(migration_throttle_* variables)") from None
            if opts[key] < 0:
                raise MigrationError(f"throttle option {key} must not be negative ({opts[key]})")
    if opts["check_interval_ms"] < 10:
        raise MigrationError("throttle option check_interval_ms must be at least 10")
    if not 0 < opts["duty_cycle"] <= 1:
        raise MigrationError(f"throttle option duty_cycle must be over 0 and at most 1, not {opts['duty_cycle']:g} "
                             "(migration_throttle_duty_cycle: the most of the wall time the batches may work; "
                             "1 - no cap)")
    return opts


def is_local(host: str | None) -> bool:
    """The database on this host: a Unix socket (no host, or a directory) or a loopback address."""
    host = (host or "").strip()
    if not host or host.startswith("/") or host.startswith("@") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def detect_cpus(opts: dict, host: str | None) -> tuple[float, str, str | None]:
    """(cores, where the figure comes from, why a source was passed over or None): the option;
    else this host's when the database is on it; else Prometheus' node-exporter query when a
    prometheus_url and db_cpus_query are given; else DEFAULT_DB_CPUS, said."""
    if opts["db_cpus"]:
        return float(opts["db_cpus"]), "migration_throttle_db_cpus", None
    if is_local(host):
        return float(os.cpu_count() or DEFAULT_DB_CPUS), \
            f"this host's (os.cpu_count(): the database is at {host or 'a Unix socket'})", None
    note = None
    if opts["prometheus_url"] and opts["db_cpus_query"]:
        reading = prometheus_query(opts["prometheus_url"], opts["db_cpus_query"], opts["prometheus_timeout_s"])
        if reading["value"] is not None and reading["value"] >= 1:
            return float(reading["value"]), f"Prometheus ({opts['db_cpus_query']})", None
        note = (f"db_cpus: Prometheus gave no core count ({reading['error'] or reading['value']}) for "
                f"{opts['db_cpus_query']}; the default {DEFAULT_DB_CPUS:g} is taken")
    return DEFAULT_DB_CPUS, (f"the default {DEFAULT_DB_CPUS:g} (the database is not on this host: set "
                             "migration_throttle_db_cpus to its cores)"), note


def recorded_baseline(conn) -> dict | None:
    """The pre-migration baseline sample phase 1's latest successful record keeps, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
        if not cur.fetchone()[0]:
            return None
        cur.execute(f"""SELECT details -> 'monitoring' -> 'baseline' FROM {LEDGER_SCHEMA}.history
                         WHERE phase = '1' AND direction = 'apply' AND status = 'succeeded'
                         ORDER BY finished_at DESC, id DESC LIMIT 1""")
        row = cur.fetchone()
    return row[0] if row and isinstance(row[0], dict) else None


def derive_limits(opts: dict, baseline: dict, cpus: float | None = None,
                  app_connections: int | None = None) -> dict[str, tuple[float, float]]:
    """(max, critical) per signal: the options', or derived from the baseline where 0.

    Running statements (active_sessions) are a queue once more of them run than the database
    has cores: over the baseline's + the cores slow down, + twice the cores pause. And a pool
    never has more running than it has connections: with the application's connections known
    (app_connections, at the start), over half of them busy slows down and all of them busy
    pauses - a pool of 4 reaches its limits, where 2x the baseline + 4 was out of its reach."""
    probe = float(baseline.get("probe_ms") or 0.0)
    active = float(baseline.get("active_sessions") or 0)
    waiting = float(baseline.get("lock_waiters") or 0)
    cores = float(cpus or DEFAULT_DB_CPUS)

    def pick(value: float, derived: float) -> float:
        return float(value) if value else derived

    active_max, active_critical = active + cores, active + 2 * cores
    if app_connections and app_connections >= 2:
        active_max = min(active_max, app_connections / 2)
        active_critical = max(active_max, min(active_critical, app_connections - 1))
    return {
        "probe": (pick(opts["probe_max_ms"], max(PROBE_MAX[0] * probe, probe + PROBE_MAX[1])),
                  pick(opts["probe_critical_ms"], max(PROBE_CRITICAL[0] * probe, probe + PROBE_CRITICAL[1]))),
        "active_sessions": (pick(opts["active_sessions_max"], active_max),
                            pick(opts["active_sessions_critical"], active_critical)),
        "lock_waiters": (pick(opts["lock_waiters_max"], waiting + 2),
                         pick(opts["lock_waiters_critical"], waiting + 8)),
        "replication_lag": (float(opts["replication_lag_max_s"]), float(opts["replication_lag_critical_s"])),
        "cpu_sessions": (pick(opts["cpu_sessions_max"], cores), pick(opts["cpu_sessions_critical"], 2 * cores)),
        "app_cpu_sessions": (pick(opts["app_cpu_sessions_critical"], cores),
                             pick(opts["app_cpu_sessions_critical"], cores)),
    }


def app_limits(opts: dict, latency_ms: float | None) -> dict[str, tuple[float, float]]:
    """(max, critical) of the application's Prometheus signals, from its reading at the start."""
    out: dict[str, tuple[float, float]] = {}
    if latency_ms is not None or opts["app_latency_max_ms"]:
        base = float(latency_ms or 0.0)
        derived = (max(base * (1 + opts["app_latency_max_pct"] / 100.0), base + APP_LATENCY_DELTA[0]),
                   max(base * (1 + opts["app_latency_critical_pct"] / 100.0), base + APP_LATENCY_DELTA[1]))
        out["app_latency"] = (float(opts["app_latency_max_ms"] or derived[0]),
                              float(opts["app_latency_critical_ms"] or derived[1]))
    out["app_rate_drop"] = (float(opts["app_rate_drop_max_pct"]), float(opts["app_rate_drop_critical_pct"]))
    return out


# Sessions on CPU: running (active) and waiting for nothing (no wait_event: not for a lock, I/O,
# the client, or a latch). The application's are every backend doing its work (its parallel
# workers, and autovacuum, which takes the same cores); the migration's are application_name
# pgmigrate*. The throttle's own session is left out of both.
SIGNAL_SQL = """
SELECT (SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND application_name NOT LIKE %(own)s) AS active_sessions,
       (SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND wait_event IS NULL AND pid <> pg_backend_pid()
           AND backend_type IN ('client backend', 'parallel worker', 'autovacuum worker')
           AND coalesce(application_name, '') NOT LIKE %(own)s) AS app_on_cpu,
       (SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND wait_event IS NULL AND pid <> pg_backend_pid()
           AND application_name LIKE %(own)s) AS own_on_cpu,
       (SELECT count(DISTINCT w.pid) FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid
         WHERE NOT w.granted AND a.application_name NOT LIKE %(own)s
           AND (w.relation = ANY (%(tables)s::regclass[])
                OR EXISTS (SELECT 1 FROM pg_locks h
                            WHERE h.pid = w.pid AND h.granted AND h.relation = ANY (%(tables)s::regclass[]))))
         AS lock_waiters,
       (SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication) AS replication_lag
"""


class Throttle:
    """Between batches: wait() sleeps as long as the database needs, and says how much of its
    target the next batch may take (1.0, or 0.5 while slowed down). The time from one wait()
    to the same thread's next is that loop's batch: the duty cycle rests in proportion to it,
    and the migration's sessions on CPU count it. A loop that goes idle between batches (waits
    for work) says so with idle(), so the idle time counts as no batch. Thread-safe: the
    backfill's workers share one."""

    def __init__(self, params: dict, given: dict | None, tables: list[str], name: str) -> None:
        self.opts = options(given)
        self.params = params
        self.name = name
        self.tables = [t for t in [*tables, *self.opts["tables"]] if t]
        self.conn = None
        self.lock = threading.Lock()
        self.level = 0
        self.over: dict[str, dict] = {}
        self.checked = 0.0
        self.probes: list[float] = []
        self.started = time.monotonic()
        self.seconds = {"slowed": 0.0, "paused": 0.0}
        self.by_signal: dict[str, float] = {}
        self.worst: dict[str, float] = {}
        self.episodes: list[dict] = []
        self.checks = 0
        self.baseline: dict = {}
        self.limits: dict[str, tuple[float, float]] = {}
        self.unwatched: list[str] = []
        self.cpus: dict[str, Any] = {}
        self.app_connections = 0
        # The duty cycle's accounting: the batches' time, the rests it added, and the time the
        # signals made the loops wait (which counts towards the rest).
        self.duty = {"work_s": 0.0, "rested_s": 0.0, "waited_s": 0.0, "batches": 0}
        self.working: dict[int, float] = {}
        self.work_since_check = 0.0
        self.cpu_samples: collections.deque = collections.deque(maxlen=CPU_WINDOW)
        self.cpu_now: dict[str, float] = {}
        self.app: dict[str, Any] = {"watched": [], "readings": {}, "read_at": 0.0}
        if self.opts["enabled"]:
            self._start()

    # -- signals -------------------------------------------------------------------------------
    def _connection(self):
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.params, "pgmigrate-throttle")
            self.conn.autocommit = True
        return self.conn

    def _probe(self, cur) -> float:
        if not self.opts["probe_sql"]:  # the migration names no probe: nothing to slow down for
            return 0.0
        cur.execute("SET statement_timeout = %s", (f"{max(1000, int(self.limits.get('probe', (0, 5000))[1] * 2))}ms",))
        started = time.perf_counter()
        try:
            cur.execute(self.opts["probe_sql"])
            cur.fetchall()
            return (time.perf_counter() - started) * 1000.0
        except psycopg2.Error:  # a probe cut short by its timeout is slower than critical
            return (time.perf_counter() - started) * 1000.0

    def _start(self) -> None:
        conn = self._connection()
        with conn.cursor() as cur:
            cur.execute("SELECT array_agg(to_regclass(t)::text) FILTER (WHERE to_regclass(t) IS NOT NULL) "
                        "FROM unnest(%s::text[]) t", (self.tables,))
            self.tables = cur.fetchone()[0] or []
            # A login without pg_read_all_stats sees the replicas' rows without their lag.
            cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state IS NULL")
            hidden = cur.fetchone()[0]
            # The application's connections now: its pool, which bounds its running statements.
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND pid <> pg_backend_pid() AND application_name NOT LIKE %s", (OWN_SESSIONS,))
            self.app_connections = int(cur.fetchone()[0])
        if hidden:
            self.unwatched.append(
                f"replication_lag: {hidden} replica(s) attached whose lag this login may not read "
                "(GRANT pg_monitor TO it to have the batches wait for them)")
        cores, source, note = detect_cpus(self.opts, self.params.get("db_host"))
        self.cpus = {"value": cores, "source": source}
        if note:
            self.unwatched.append(note)
        recorded = recorded_baseline(conn)
        if recorded and (recorded.get("probe") or {}).get("p95_ms") is not None:
            self.baseline = {
                "source": "phase 1's ledger record", "at": recorded.get("at"),
                "probe_ms": float(recorded["probe"]["p95_ms"]),
                "active_sessions": int((recorded.get("connections") or {}).get("active", 0) or 0),
                "lock_waiters": int((recorded.get("locks") or {}).get("waiting", 0) or 0)}
        else:
            # No recorded baseline (monitoring off, or no phase 1 record): the probe now, at the
            # start of the batches, is the best there is.
            with conn.cursor() as cur:
                timings = sorted(self._probe(cur) for _probe in range(5))
            self.baseline = {"source": "measured at the start of the batches (no baseline recorded)",
                             "probe_ms": round(timings[2], 3), "active_sessions": 0, "lock_waiters": 0}
        self.limits = derive_limits(self.opts, self.baseline, cores, self.app_connections)
        self._start_app()

    def _start_app(self) -> None:
        """The application's Prometheus signals: each read once now, as its baseline; one that
        gives no figure is not watched, and said so."""
        o = self.opts
        if not o["prometheus_url"]:
            return
        latency = rate = None
        if o["app_latency_query"]:
            reading = prometheus_query(o["prometheus_url"], o["app_latency_query"], o["prometheus_timeout_s"])
            if reading["value"] is None:
                self.unwatched.append(f"app_latency: {reading['error']} ({o['app_latency_query']})")
            else:
                latency = reading["value"]
                self.app["watched"].append("app_latency")
        if o["app_rate_query"]:
            reading = prometheus_query(o["prometheus_url"], o["app_rate_query"], o["prometheus_timeout_s"])
            if reading["value"] is None:
                self.unwatched.append(f"app_rate_drop: {reading['error']} ({o['app_rate_query']})")
            elif reading["value"] < APP_RATE_MIN:
                self.unwatched.append(f"app_rate_drop: {reading['value']:g} requests/s at the start, too few "
                                      "for a drop to say anything")
            else:
                rate = reading["value"]
                self.app["watched"].append("app_rate_drop")
        self.baseline.update({"app_latency_ms": latency, "app_rate_per_s": rate,
                              "app_source": "Prometheus, at the start of the batches"})
        limits = app_limits(o, latency)
        self.limits.update({k: v for k, v in limits.items() if k in self.app["watched"]})

    def _app_sample(self) -> dict[str, float | None]:
        """The application's signals, read at most every prometheus_interval_s (a failed read
        is an error entry: never taken as healthy)."""
        if not self.app["watched"]:
            return {}
        now = time.monotonic()
        if now - self.app["read_at"] >= self.opts["prometheus_interval_s"]:
            o = self.opts
            queries = {"app_latency": o["app_latency_query"], "app_rate_drop": o["app_rate_query"]}
            self.app["readings"] = {k: prometheus_query(o["prometheus_url"], queries[k], o["prometheus_timeout_s"])
                                    for k in self.app["watched"]}
            self.app["read_at"] = now
        out: dict[str, Any] = {}
        for signal, reading in self.app["readings"].items():
            value = reading["value"]
            if value is None:
                out[signal] = {"error": reading["error"]}
            elif signal == "app_rate_drop":
                base = float(self.baseline["app_rate_per_s"])
                out[signal] = max(0.0, 100.0 * (1.0 - value / base))
            else:
                out[signal] = float(value)
        return out

    def _sample(self) -> dict[str, Any]:
        conn = self._connection()
        with conn.cursor() as cur:
            self.probes = [*self.probes[-2:], self._probe(cur)]
            cur.execute(SIGNAL_SQL, {"own": OWN_SESSIONS, "tables": self.tables})
            active, app_cpu, own_cpu, waiters, lag = cur.fetchone()
        # The migration's sessions on CPU: those caught running now, or, when more, the share of
        # the time since the last check that this throttle's loops spent in their batches (a
        # loop's own session is idle while it asks the throttle).
        now = time.monotonic()
        since = max(now - (self.checked or self.started), 1e-3)
        busy = min(float(len(self.working) + 1), self.work_since_check / since)
        self.work_since_check = 0.0
        self.cpu_samples.append((float(app_cpu), max(float(own_cpu), busy)))
        app = statistics.fmean(sample[0] for sample in self.cpu_samples)
        own = statistics.fmean(sample[1] for sample in self.cpu_samples)
        self.cpu_now = {"application": round(app, 2), "migration": round(own, 2)}
        # The median of the last three probes: one slow read is noise, three are load.
        return {"probe": round(statistics.median(self.probes), 3), "active_sessions": float(active),
                "lock_waiters": float(waiters), "replication_lag": None if lag is None else float(lag),
                "cpu_sessions": round(app + own, 3), "app_cpu_sessions": round(app, 3),
                **self._app_sample()}

    def _check(self) -> None:
        """Sample (at most once per check interval), account the time since the last check to
        the state the last check found, and take the new state."""
        now = time.monotonic()
        if self.checked and now - self.checked < self.opts["check_interval_ms"] / 1000.0:
            return
        if self.checked and self.level:
            spent = now - self.checked
            self.seconds["slowed" if self.level == 1 else "paused"] += spent
            for signal in self.over:
                self.by_signal[signal] = self.by_signal.get(signal, 0.0) + spent
        try:
            values = self._sample()
        except Exception as exc:  # noqa: BLE001 - a lost signal connection: reconnect next time
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            values = {}
            self.over = {"signal_error": {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else "?"}}
        self.checks += 1
        over: dict[str, dict] = {}
        level = 0
        for signal, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict):  # an application signal Prometheus did not give: slow down
                over[signal] = {**value, "grade": 1}
                level = max(level, 1)
                continue
            high, critical = self.limits[signal]
            self.worst[signal] = max(self.worst.get(signal, 0.0), value)
            if signal in AT_LIMIT:
                grade = 2 if value >= critical else 1 if value >= high else 0
            else:
                grade = 2 if value > critical else 1 if value > high else 0
            if grade:
                over[signal] = {"value": round(value, 3), "max": round(high, 3),
                                "critical": round(critical, 3), "grade": grade}
                if signal in AT_LIMIT:
                    over[signal].update(self.cpu_now)
                level = max(level, grade)
        if not values:
            level, over = 1, self.over
        if level != self.level and len(self.episodes) < 50:
            because = {k: {"value": v["value"], "limit": v["critical" if v["grade"] == 2 else "max"],
                           **{p: v[p] for p in ("application", "migration") if p in v}}
                       for k, v in over.items() if isinstance(v, dict) and "value" in v}
            because.update({k: {"error": v["error"]} for k, v in over.items()
                            if isinstance(v, dict) and "value" not in v and "error" in v})
            self.episodes.append({"at_s": round(now - self.started, 2), "state": STATES[level],
                                  "because": because})
        self.level, self.over, self.checked = level, over, now

    # -- between batches -------------------------------------------------------------------------
    def wait(self) -> float:
        """Sleep as the signals and the duty cycle say; the share of its target the next batch
        may take."""
        if not self.opts["enabled"]:
            return 1.0
        entered = time.monotonic()
        me = threading.get_ident()
        with self.lock:
            began = self.working.pop(me, None)
            work = entered - began if began is not None else 0.0
            self.work_since_check += work
            if began is not None:
                self.duty["work_s"] += work
                self.duty["batches"] += 1
        pause_started = None
        while True:
            with self.lock:
                self._check()
                level = self.level
            if level < 2:
                break
            pause_started = pause_started or time.monotonic()
            if time.monotonic() - pause_started > self.opts["max_pause_s"]:
                raise MigrationError(
                    f"{self.name}: paused for more than {self.opts['max_pause_s']:g} s because "
                    f"{self.reason()}; nothing is half-done (every batch committed or rolled back): "
                    "rerun once the load is back to normal, or raise migration_throttle_max_pause_s "
                    "or the migration_throttle_* critical limits")
            time.sleep(self.opts["check_interval_ms"] / 1000.0)
        if level == 1:
            time.sleep(self.opts["slow_pause_ms"] / 1000.0)
        self._rest(work, time.monotonic() - entered)
        with self.lock:
            self.working[me] = time.monotonic()
        return 0.5 if level == 1 else 1.0

    def _rest(self, work: float, waited: float) -> None:
        """The duty cycle: after a batch of `work` seconds, rest until the loop has yielded
        work x (1 - duty_cycle) / duty_cycle, counting what the signals made it wait."""
        duty = self.opts["duty_cycle"]
        owed = work * (1.0 - duty) / duty - waited if duty < 1 and work > 0 else 0.0
        rested = 0.0
        if owed > 0:
            t0 = time.monotonic()
            time.sleep(owed)
            rested = time.monotonic() - t0
        with self.lock:
            self.duty["rested_s"] += rested
            if work > 0:
                self.duty["waited_s"] += waited

    def idle(self) -> None:
        """The calling loop has no batch running until its next wait() (it waits for work): the
        time until then is neither a batch nor owed a rest."""
        with self.lock:
            self.working.pop(threading.get_ident(), None)

    def reason(self) -> str:
        parts = []
        for k, v in self.over.items():
            if not isinstance(v, dict):
                continue
            if "value" in v:
                limit = v["critical"] if v["grade"] == 2 else v["max"]
                word = ("at or over" if k in AT_LIMIT else "over") + (" critical" if v["grade"] == 2 else " max")
                split = (f" (application {v['application']:g}, migration {v['migration']:g})"
                         if "application" in v else "")
                parts.append(f"{k} {v['value']:g}{split} {word} {limit:g}")
            elif k != "signal_error" and "error" in v:
                parts.append(f"{k} unknown ({v['error']})")
        return "; ".join(parts) or "no signal"

    def summary(self) -> dict[str, Any]:
        with self.lock:
            if self.opts["enabled"]:
                # The time since the last check belongs to the state it found.
                self.checked = self.checked or time.monotonic()
                spent = time.monotonic() - self.checked
                if self.level:
                    self.seconds["slowed" if self.level == 1 else "paused"] += spent
                    for signal in self.over:
                        self.by_signal[signal] = self.by_signal.get(signal, 0.0) + spent
                self.checked = time.monotonic()
            return summarise(self)

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()


STATES = ("running", "slowed down", "paused")
UNITS = {"probe": " ms", "replication_lag": " s", "app_latency": " ms", "app_rate_drop": "%"}


def summarise(t: Throttle) -> dict[str, Any]:
    slowed, paused = round(t.seconds["slowed"], 2), round(t.seconds["paused"], 2)
    out: dict[str, Any] = {
        "enabled": t.opts["enabled"], "slowed_s": slowed, "paused_s": paused,
        "throttled_s": round(slowed + paused, 2),
        "by_signal_s": {k: round(v, 2) for k, v in sorted(t.by_signal.items(), key=lambda kv: -kv[1])},
        "checks": t.checks, "episodes": t.episodes[:20]}
    if t.opts["enabled"]:
        out["baseline"] = t.baseline
        out["limits"] = {k: {"max": round(a, 3), "critical": round(b, 3)} for k, (a, b) in t.limits.items()}
        out["worst"] = {k: round(v, 3) for k, v in t.worst.items()}
        out["db_cpus"] = t.cpus
        d = t.duty
        yielded = d["rested_s"] + d["waited_s"]
        out["duty_cycle"] = {
            "limit": t.opts["duty_cycle"], "batches": d["batches"], "work_s": round(d["work_s"], 3),
            "rested_s": round(d["rested_s"], 3), "waited_s": round(d["waited_s"], 3),
            "share": round(d["work_s"] / (d["work_s"] + yielded), 3) if d["work_s"] else None}
    if t.unwatched:
        out["unwatched"] = list(t.unwatched)
    out["line"] = throttle_line(out)
    return out


def signal_why(signal: str, seconds: float, s: dict[str, Any]) -> str:
    """`signal N s (up to V against max M, critical C)`: how long, and how far past its limits."""
    worst = (s.get("worst") or {}).get(signal)
    limits = (s.get("limits") or {}).get(signal)
    if worst is None or not limits:
        return f"{signal} {seconds:g} s"
    unit = UNITS.get(signal, "")
    return (f"{signal} {seconds:g} s (up to {worst:g}{unit} against max {limits['max']:g}{unit}, "
            f"critical {limits['critical']:g}{unit})")


def throttle_line(s: dict[str, Any]) -> str:
    """One line for progress output and the report: how long, why, and the duty cycle's rest."""
    if not s.get("enabled"):
        return "throttle off"
    unwatched = "".join(f"; not watched: {u}" for u in s.get("unwatched") or [])
    d = s.get("duty_cycle") or {}
    duty = (f"; duty cycle {d['limit']:g}: rested {d['rested_s']:g} s after {d['work_s']:g} s of batches"
            if d.get("rested_s") else "")
    if not s.get("throttled_s"):
        return f"never throttled ({s.get('checks', 0)} checks){duty}{unwatched}"
    why = ", ".join(signal_why(k, v, s) for k, v in (s.get("by_signal_s") or {}).items())
    return (f"throttled {s['throttled_s']:g} s (slowed down {s['slowed_s']:g} s, paused {s['paused_s']:g} s)"
            f" because of {why or 'lost signals'}{duty}{unwatched}")


def merge_summaries(summaries: list[dict]) -> dict[str, Any]:
    """The throttle summaries of several module runs (chunks, files) as one."""
    summaries = [s for s in summaries if s]
    if not summaries:
        return {"enabled": False, "line": "throttle off"}
    out: dict[str, Any] = {"enabled": any(s.get("enabled") for s in summaries)}
    for key in ("slowed_s", "paused_s", "throttled_s"):
        out[key] = round(sum(float(s.get(key, 0)) for s in summaries), 2)
    out["checks"] = sum(int(s.get("checks", 0)) for s in summaries)
    by: dict[str, float] = {}
    for s in summaries:
        for k, v in (s.get("by_signal_s") or {}).items():
            by[k] = by.get(k, 0.0) + float(v)
    out["by_signal_s"] = {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}
    for key in ("baseline", "limits", "db_cpus"):
        found = [s[key] for s in summaries if s.get(key)]
        if found:
            out[key] = found[0]
    worst: dict[str, float] = {}
    for s in summaries:
        for k, v in (s.get("worst") or {}).items():
            worst[k] = max(worst.get(k, 0.0), float(v))
    out["worst"] = worst
    duties = [s["duty_cycle"] for s in summaries if s.get("duty_cycle")]
    if duties:
        duty = {"limit": duties[0]["limit"]}
        for key in ("batches", "work_s", "rested_s", "waited_s"):
            duty[key] = round(sum(float(d.get(key) or 0) for d in duties), 3)
        yielded = duty["rested_s"] + duty["waited_s"]
        duty["share"] = round(duty["work_s"] / (duty["work_s"] + yielded), 3) if duty["work_s"] else None
        out["duty_cycle"] = duty
    unwatched = list(dict.fromkeys(u for s in summaries for u in s.get("unwatched") or []))
    if unwatched:
        out["unwatched"] = unwatched
    out["line"] = throttle_line(out)
    return out


# --- batches that hold their locks no longer than their target ------------------------------------

class BatchCut(Exception):
    """The batch ran into its statement_timeout (its target) and was rolled back."""


def run_capped(conn, sql: str, args: Any, lock: dict, cap_ms: float | None,
               tally: dict | None = None) -> tuple[dict, int]:
    """One batch statement in ONE round trip: SET lock_timeout, SET statement_timeout (cap_ms;
    None: the lock settings') and the statement go as one simple query, which the server runs as
    one implicit transaction, committed when the statement ends: the batch's row locks are
    released then, without waiting for the client's next round trip (a busy controller may take
    its time). Lock timeouts and deadlocks are retried with backoff, as with_lock_retry does.
    Returns ({column: value} of the statement's first row, retries); a batch cut short by the
    cap raises BatchCut (rolled back with its implicit transaction). A batch cancelled by a
    cancel request is run again (CANCEL_RETRIES) and counted in tally["cancelled"], so the
    caller's result says whether it happened (one tally per session: no lock)."""
    timeout = int(cap_ms) if cap_ms else int(lock["statement_timeout_ms"])
    prefix = (f"SET lock_timeout = '{int(lock['lock_timeout_ms'])}ms'; "
              f"SET statement_timeout = '{max(0, timeout)}ms'; ")
    delays = backoff_delays(lock["backoff_initial_ms"], lock["backoff_max_ms"])
    retries = cancels = 0
    conn.autocommit = True
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute(prefix + sql, args)
                cols = [c.name for c in cur.description]
                row = cur.fetchone()
            return dict(zip(cols, row, strict=True)), retries
        except psycopg2.Error as exc:
            clear_aborted(conn)
            code = sqlstate(exc)
            if cap_ms and code == STATEMENT_TIMEOUT and "statement timeout" in str(exc):
                raise BatchCut(str(exc).strip()) from None
            if cancelled_by_request(exc):
                cancels += 1
                if tally is not None:
                    tally["cancelled"] = tally.get("cancelled", 0) + 1
                if cancels > CANCEL_RETRIES:
                    raise MigrationError(
                        f"the batch was cancelled {cancels} times in a row ({str(exc).strip()}): another "
                        "session sends it cancel requests (pg_cancel_backend); each cancelled batch was "
                        "rolled back whole. To stop the migration, stop the playbook (Ctrl-C) or end "
                        "the session (pg_terminate_backend); then run it again to go on") from None
                time.sleep(next(delays))
                continue
            if code not in RETRYABLE:
                raise
            retries += 1
            if retries >= lock["lock_attempts"]:
                raise MigrationError(
                    f"gave up after {retries} attempts to take a lock within {lock['lock_timeout_ms']} ms "
                    f"({str(exc).strip()}); a long transaction holds it: find it in pg_stat_activity, "
                    "or raise migration_lock_attempts") from None
            time.sleep(next(delays))


def end_batches(conn) -> None:
    """The session's lock_timeout and statement_timeout as they were before run_capped set them
    (each run_capped sets them for the session, in its one round trip)."""
    if conn.closed:
        return
    clear_aborted(conn)
    conn.autocommit = True
    for attempt in range(CANCEL_RETRIES + 1):
        try:
            with conn.cursor() as cur:
                cur.execute("RESET lock_timeout; RESET statement_timeout")
            return
        except psycopg2.Error as exc:
            clear_aborted(conn)
            if not cancelled_by_request(exc) or attempt == CANCEL_RETRIES:
                raise


def cancelled_by_request(exc: psycopg2.Error) -> bool:
    """A statement cancelled by a cancel request (or a late timeout read as one), not by its
    own lock_timeout or statement_timeout."""
    text = str(exc)
    return sqlstate(exc) == STATEMENT_TIMEOUT and "timeout" not in text


def clear_aborted(conn) -> None:
    """End a transaction the server still holds aborted after the driver's rollback."""
    if conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("ROLLBACK")
        finally:
            conn.autocommit = autocommit


class BatchSizer:
    """A batch size (in rows, or pages for the backfill) aimed at AIM x target_ms, capped at
    target_ms: at most halved or doubled per batch; a batch cut at the cap is retried at a
    quarter of its size. At the smallest size, a cut batch's next try gets twice the cap (after
    8x, none), so a database too slow for even the smallest batch still makes progress; batches
    over their target are counted."""

    AIM = 0.6

    def __init__(self, size: int, smallest: int, largest: int, target_ms: float) -> None:
        self.smallest = max(1, smallest)
        self.largest = max(self.smallest, largest)
        self.size = int(min(self.largest, max(self.smallest, size)))
        self.target = float(target_ms) / 1000.0
        self.stretch = 1
        self.cut = 0
        self.over_target = 0
        self.share = 1.0

    def cap_ms(self) -> float | None:
        return None if self.stretch > 8 else 1000.0 * self.target * self.stretch

    def done(self, elapsed: float, waited: bool, share: float = 1.0) -> None:
        """After a batch that committed: aim the next at share x AIM x target."""
        if elapsed > self.target:
            self.over_target += 1
        self.stretch = 1
        if not waited:  # a batch that waited for a lock says nothing about its size
            factor = min(2.0, max(0.5, share * self.AIM * self.target / max(elapsed, 1e-4)))
            self.size = int(min(self.largest, max(self.smallest, round(self.size * factor))))

    def was_cut(self) -> None:
        self.cut += 1
        if self.size <= self.smallest:
            self.stretch *= 2
        self.size = max(self.smallest, self.size // 4)
