# The migration yields to the application (gh-ost's --max-load / --critical-load): between two
# batches, the backfill, phase 3's inserts and the rollback's batches ask Throttle.wait() how the
# database is doing, from live signals, against the pre-migration baseline phase 1's ledger record
# keeps:
#   probe             the monitoring probe's latency (the application's reads of overrides);
#   active_sessions   sessions running a statement, the migration's own left out;
#   lock_waiters      sessions waiting for a lock while writing the tables the batches write;
#   replication_lag   the replicas' replay lag (none attached: no signal; attached but hidden
#                     from this login: said in the summary, not watched).
# Over a signal's max the batches slow down (a pause between them, their target halved); over its
# critical limit they pause until every signal is back under critical, then go on slowly until
# it is under max. One implementation for every batch loop; its summary (how long it slowed
# down and paused, and why) goes into the module's result, the ledger and the report.
#
# The batches themselves hold their row locks no longer than their target: each runs under a
# statement_timeout of the target (BatchSizer, run_capped); one cut short is rolled back, and
# the next is a quarter of its size.
from __future__ import annotations

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
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import DEFAULT_PROBE_SQL

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
}
THROTTLE_ARG = {"type": "dict", "default": {}}
SIGNALS = ("probe", "active_sessions", "lock_waiters", "replication_lag")
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
    return opts


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


def derive_limits(opts: dict, baseline: dict) -> dict[str, tuple[float, float]]:
    """(max, critical) per signal: the options', or derived from the baseline where 0."""
    probe = float(baseline.get("probe_ms") or 0.0)
    active = float(baseline.get("active_sessions") or 0)
    waiting = float(baseline.get("lock_waiters") or 0)

    def pick(value: float, derived: float) -> float:
        return float(value) if value else derived

    return {
        "probe": (pick(opts["probe_max_ms"], max(PROBE_MAX[0] * probe, probe + PROBE_MAX[1])),
                  pick(opts["probe_critical_ms"], max(PROBE_CRITICAL[0] * probe, probe + PROBE_CRITICAL[1]))),
        "active_sessions": (pick(opts["active_sessions_max"], 2 * active + 4),
                            pick(opts["active_sessions_critical"], 4 * active + 16)),
        "lock_waiters": (pick(opts["lock_waiters_max"], waiting + 2),
                         pick(opts["lock_waiters_critical"], waiting + 8)),
        "replication_lag": (float(opts["replication_lag_max_s"]), float(opts["replication_lag_critical_s"])),
    }


SIGNAL_SQL = """
SELECT (SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND application_name NOT LIKE %(own)s) AS active_sessions,
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
    target the next batch may take (1.0, or 0.5 while slowed down). Thread-safe: the backfill's
    workers share one."""

    def __init__(self, params: dict, given: dict | None, tables: list[str], name: str) -> None:
        self.opts = options(given)
        self.params = params
        self.name = name
        self.tables = [t for t in tables if t]
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
        if self.opts["enabled"]:
            self._start()

    # -- signals -------------------------------------------------------------------------------
    def _connection(self):
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.params, "pgmigrate-throttle")
            self.conn.autocommit = True
        return self.conn

    def _probe(self, cur) -> float:
        cur.execute("SET statement_timeout = %s", (f"{max(1000, int(self.limits.get('probe', (0, 5000))[1] * 2))}ms",))
        started = time.perf_counter()
        try:
            cur.execute(self.opts["probe_sql"] or DEFAULT_PROBE_SQL)
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
        if hidden:
            self.unwatched.append(
                f"replication_lag: {hidden} replica(s) attached whose lag this login may not read "
                "(GRANT pg_monitor TO it to have the batches wait for them)")
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
        self.limits = derive_limits(self.opts, self.baseline)

    def _sample(self) -> dict[str, float | None]:
        conn = self._connection()
        with conn.cursor() as cur:
            self.probes = [*self.probes[-2:], self._probe(cur)]
            cur.execute(SIGNAL_SQL, {"own": OWN_SESSIONS, "tables": self.tables})
            active, waiters, lag = cur.fetchone()
        # The median of the last three probes: one slow read is noise, three are load.
        return {"probe": round(statistics.median(self.probes), 3), "active_sessions": float(active),
                "lock_waiters": float(waiters), "replication_lag": None if lag is None else float(lag)}

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
            high, critical = self.limits[signal]
            self.worst[signal] = max(self.worst.get(signal, 0.0), value)
            grade = 2 if value > critical else 1 if value > high else 0
            if grade:
                over[signal] = {"value": round(value, 3), "max": round(high, 3),
                                "critical": round(critical, 3), "grade": grade}
                level = max(level, grade)
        if not values:
            level, over = 1, self.over
        if level != self.level and len(self.episodes) < 50:
            because = {k: {"value": v["value"], "limit": v["critical" if v["grade"] == 2 else "max"]}
                       for k, v in over.items() if isinstance(v, dict) and "value" in v}
            self.episodes.append({"at_s": round(now - self.started, 2), "state": STATES[level],
                                  "because": because})
        self.level, self.over, self.checked = level, over, now

    # -- between batches -------------------------------------------------------------------------
    def wait(self) -> float:
        """Sleep as the signals say; the share of its target the next batch may take."""
        if not self.opts["enabled"]:
            return 1.0
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
            return 0.5
        return 1.0

    def reason(self) -> str:
        return "; ".join(f"{k} {v['value']:g} over {'critical' if v['grade'] == 2 else 'max'} "
                         f"{v['critical'] if v['grade'] == 2 else v['max']:g}"
                         for k, v in self.over.items() if isinstance(v, dict) and "value" in v) or "no signal"

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
    if t.unwatched:
        out["unwatched"] = list(t.unwatched)
    out["line"] = throttle_line(out)
    return out


def throttle_line(s: dict[str, Any]) -> str:
    """One line for progress output and the report: how long, and why."""
    if not s.get("enabled"):
        return "throttle off"
    unwatched = "".join(f"; not watched: {u}" for u in s.get("unwatched") or [])
    if not s.get("throttled_s"):
        return f"never throttled ({s.get('checks', 0)} checks){unwatched}"
    why = ", ".join(f"{k} {v:g} s" for k, v in (s.get("by_signal_s") or {}).items())
    return (f"throttled {s['throttled_s']:g} s (slowed down {s['slowed_s']:g} s, paused {s['paused_s']:g} s)"
            f" because of {why or 'lost signals'}{unwatched}")


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
    for key in ("baseline", "limits"):
        found = [s[key] for s in summaries if s.get(key)]
        if found:
            out[key] = found[0]
    worst: dict[str, float] = {}
    for s in summaries:
        for k, v in (s.get("worst") or {}).items():
            worst[k] = max(worst.get(k, 0.0), float(v))
    out["worst"] = worst
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
