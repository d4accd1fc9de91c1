# Monitoring for the migration (strategy 2.1, 4.2 and 5.1): one sample of the database's health,
# the strategy's alert thresholds, and its abort criteria (performance degraded by more than 50%
# against the pre-migration baseline, an integrity violation). Read-only: every query runs in
# autocommit, so sampling itself never counts as a rollback in pg_stat_database.
from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import math
import os
import time
import urllib.error
import urllib.parse
from typing import Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    MigrationError,
    connect,
    fetch_dicts,
    json_safe,
)

# The strategy's thresholds (4.2). The role's variables override them.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "p95_ms": 2000.0,  # query response time p95 over 2 s
    "error_rate_pct": 1.0,  # error (rollback) rate over 1%
    "event_lag_s": 300.0,  # event processing lag over 5 minutes
    "pool_utilisation_pct": 85.0,  # connections in use over 85% of max_connections
    # Below this many transactions in an interval the rollback rate is shown, never alerted on:
    # a handful of transactions says nothing about an error rate.
    "error_rate_min_xacts": 1000.0,
}

# Abort criteria (5.1): performance degraded by more than this against the baseline, and only
# when the difference is larger than min_delta_ms (a sub-millisecond probe doubles on noise).
DEFAULT_ABORT = {"degradation_pct": 50.0, "min_delta_ms": 20.0}

# What the probe is when the migration names none (its manifest's monitor.probe): no probe, its
# p95 0 and never alerted on.
NO_PROBE_NOTE = "no probe: the migration names none (its manifest's monitor.probe, or migration_monitor_probe_sql)"


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def find_key(value, key: str) -> list:
    """Every value of `key` at any depth (lock_retries sits at different depths per phase)."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, (int, float)):
                found.append(v)
            else:
                found += find_key(v, key)
    elif isinstance(value, list):
        for v in value:
            found += find_key(v, key)
    return found


def phase_lock_waits(details: dict) -> dict:
    """Lock waits a phase saw, from its ledger record's details: our statements' lock-timeout
    retries, and the monitoring's samples of sessions waiting for a lock (before and after)."""
    monitoring = (details or {}).get("monitoring") or {}
    samples = [s for s in (monitoring.get("before"), monitoring.get("after")) if isinstance(s, dict)]
    waiting = [int((s.get("locks") or {}).get("waiting", 0)) for s in samples]
    longest = [float((s.get("locks") or {}).get("longest_wait_s", 0)) for s in samples]
    return {"lock_retries": int(sum(find_key({k: v for k, v in (details or {}).items() if k != "monitoring"},
                                             "lock_retries"))),
            "sessions_waiting_max": max(waiting, default=0), "longest_wait_s": max(longest, default=0.0)}


def write_report(path: str, text: str) -> None:
    """A report file, mode 0640, replaced whole: a reader never sees half of it."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def report_pair_paths(report_dir: str, stem: str) -> dict[str, str]:
    """Where a report's JSON (machines) and Markdown (people) go: <report_dir>/<stem>.json, .md."""
    return {"json": os.path.join(report_dir, stem + ".json"), "md": os.path.join(report_dir, stem + ".md")}


def write_report_pair(paths: dict[str, str], data: Any, markdown: str) -> None:
    """A report's JSON and Markdown (report_pair_paths), its directory created 0750, each file
    replaced whole (write_report). OSError is the caller's to explain."""
    os.makedirs(os.path.dirname(paths["json"]) or ".", mode=0o750, exist_ok=True)
    write_report(paths["json"], json.dumps(data, indent=2, default=str) + "\n")
    write_report(paths["md"], markdown)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the one the phase 6 validator uses)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _one(cur: Any, sql: str, args: Any = None) -> dict[str, Any]:
    rows = fetch_dicts(cur, sql, args)
    return rows[0] if rows else {}


def _exists(cur: Any, relation: str, column: str | None = None) -> bool:
    if column is None:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,))
    else:
        cur.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_attribute
                               WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped)""",
            (relation, column))
    return bool(cur.fetchone()[0])


def object_exists(cur: Any, name: str) -> bool:
    """A relation ("table", "schema.table") or a column ("table.column") of the migration's
    schema exists: what a migration's check `requires`."""
    if "." in name:
        relation, column = name.rsplit(".", 1)
        if _exists(cur, relation, column):
            return True
    return _exists(cur, name)


def applies(cur: Any, entry: dict) -> bool:
    """Whether a manifest entry's query can run now: every object it `requires` exists and none
    it runs `unless` does (a fallback for an older schema)."""
    return (all(object_exists(cur, n) for n in entry.get("requires") or [])
            and not any(object_exists(cur, n) for n in entry.get("unless") or []))


def _number(value: Any) -> Any:
    """A query's value as JSON keeps it: numeric as float (json_safe would make it a string)."""
    return float(value) if isinstance(value, decimal.Decimal) else value


def named_values(cur: Any, sql: str, args: Any = None) -> dict[str, Any]:
    """A migration's query returning rows of (name, value), as {name: value}, in its order."""
    cur.execute(sql, args)
    if cur.description is None or len(cur.description) < 2:
        raise MigrationError("a migration's query must return rows of (name, value): "
                             + (sql.strip().splitlines() or [""])[0][:120])
    return {str(row[0]): _number(row[1]) for row in cur.fetchall()}


def connections(cur: Any) -> dict[str, Any]:
    row = _one(cur, """
        SELECT count(*) FILTER (WHERE backend_type = 'client backend') AS used,
               count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'active'
                                  AND pid <> pg_backend_pid()
                                  AND application_name NOT LIKE 'pgmigrate%') AS active,
               current_setting('max_connections')::int AS max,
               current_setting('superuser_reserved_connections')::int AS reserved
          FROM pg_stat_activity""")
    used, maximum = int(row["used"]), int(row["max"])
    return {"used": used, "max": maximum, "reserved": int(row["reserved"]), "active": int(row["active"]),
            "utilisation_pct": round(100.0 * used / maximum, 1) if maximum else 0.0}


def lock_waits(cur: Any, server_version: int) -> dict[str, Any]:
    if server_version >= 140000:  # pg_locks.waitstart: since when each waiter waits
        row = _one(cur, """
            SELECT count(DISTINCT pid) AS waiting,
                   coalesce(extract(epoch FROM max(clock_timestamp() - waitstart)), 0) AS longest_s
              FROM pg_locks WHERE NOT granted""")
    else:
        row = _one(cur, """
            SELECT count(*) AS waiting,
                   coalesce(extract(epoch FROM max(clock_timestamp() - state_change)), 0) AS longest_s
              FROM pg_stat_activity WHERE wait_event_type = 'Lock'""")
    return {"waiting": int(row["waiting"]), "longest_wait_s": round(float(row["longest_s"]), 3)}


def longest_query(cur: Any) -> dict[str, Any] | None:
    # Never the query text: it may carry secrets (ALTER ROLE ... PASSWORD, literals).
    row = _one(cur, """
        SELECT pid, application_name, wait_event_type,
               extract(epoch FROM clock_timestamp() - query_start) AS seconds
          FROM pg_stat_activity
         WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND query_start IS NOT NULL
         ORDER BY query_start LIMIT 1""")
    if not row:
        return None
    return {"pid": row["pid"], "application_name": row["application_name"],
            "waiting_on": row["wait_event_type"], "seconds": round(float(row["seconds"]), 3)}


def xacts(cur: Any) -> dict[str, int]:
    row = _one(cur, """SELECT xact_commit, xact_rollback FROM pg_stat_database
                        WHERE datname = current_database()""")
    return {"commit": int(row.get("xact_commit") or 0), "rollback": int(row.get("xact_rollback") or 0)}


def statements(cur: Any) -> dict[str, Any]:
    """pg_stat_statements' counters per statement (calls, total time), when it is usable."""
    cur.execute("SELECT to_regclass('pg_stat_statements') IS NOT NULL")
    if not cur.fetchone()[0]:
        return {"installed": False, "note": "pg_stat_statements is not installed in this database; "
                "query latency p95 comes from the probe only (CREATE EXTENSION pg_stat_statements, "
                "with shared_preload_libraries = 'pg_stat_statements', to measure the workload's)"}
    try:
        cur.execute("""SELECT queryid::text, sum(calls)::bigint, sum(total_exec_time)::float8
                         FROM pg_stat_statements
                        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND queryid IS NOT NULL
                        GROUP BY queryid""")
        counters = {qid: [int(calls), float(total)] for qid, calls, total in cur.fetchall()}
    except Exception as exc:  # noqa: BLE001 - not preloaded, or no privilege: say so, go on
        return {"installed": False, "note": f"pg_stat_statements is installed but unreadable "
                f"({str(exc).strip().splitlines()[0]}); query latency p95 comes from the probe only"}
    return {"installed": True, "counters": counters}


def statements_p95(before: dict[str, list] | None, after: dict[str, list]) -> float | None:
    """Calls-weighted p95 of statements' mean execution time over an interval.

    pg_stat_statements keeps no percentiles, only calls and total time per statement: between two
    readings each statement's mean is (delta total) / (delta calls); the p95 is the mean below
    which 95% of the interval's calls fall. Without a previous reading, the cumulative means.
    """
    weighted: list[tuple[float, int]] = []
    for qid, (calls, total) in after.items():
        prev_calls, prev_total = (before or {}).get(qid, [0, 0.0])
        d_calls, d_total = calls - prev_calls, total - prev_total
        if d_calls > 0:
            weighted.append((d_total / d_calls, d_calls))
    if not weighted:
        return None
    weighted.sort()
    total_calls = sum(c for _weight, c in weighted)
    threshold, seen = 0.95 * total_calls, 0
    for mean, calls in weighted:
        seen += calls
        if seen >= threshold:
            return round(mean, 3)
    return round(weighted[-1][0], 3)


def probe_p95(cur: Any, sql: str, runs: int, timeout_ms: int) -> dict[str, Any]:
    if not sql:
        return {"p95_ms": 0.0, "p50_ms": 0.0, "runs": 0, "note": NO_PROBE_NOTE}
    cur.execute("SET statement_timeout = %s", (f"{timeout_ms}ms",))
    timings: list[float] = []
    error = None
    for _run in range(max(1, runs)):
        started = time.perf_counter()
        try:
            cur.execute(sql)
            cur.fetchall()
            timings.append((time.perf_counter() - started) * 1000.0)
        except Exception as exc:  # noqa: BLE001 - a timed-out probe is a data point, not a crash
            timings.append(float(timeout_ms))
            error = str(exc).strip().splitlines()[0]
    cur.execute("SET statement_timeout = 0")
    result = {"p95_ms": round(percentile(timings, 95), 3), "p50_ms": round(percentile(timings, 50), 3),
              "runs": len(timings)}
    if error:
        result["error"] = error
    return result


def database_size(cur: Any) -> int:
    cur.execute("SELECT pg_database_size(current_database())")
    return int(cur.fetchone()[0])


def replication(cur: Any) -> dict[str, Any]:
    rows = fetch_dicts(cur, """
        SELECT application_name, state,
               extract(epoch FROM replay_lag) AS replay_lag_s,
               pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS lag_bytes
          FROM pg_stat_replication""")
    lags = [float(r["replay_lag_s"]) for r in rows if r["replay_lag_s"] is not None]
    return {"replicas": len(rows), "max_lag_s": round(max(lags), 3) if lags else (0.0 if rows else None),
            "max_lag_bytes": max((int(r["lag_bytes"] or 0) for r in rows), default=None),
            "note": None if rows else "no replicas attached (or no pg_monitor privilege to see them)"}


def event_lag(cur: Any, reading: tuple[str, str, str] | None) -> float | None:
    """The migration's event lag in seconds (its manifest's monitor.event_lag: table, column and
    the SQL returning one value), None where it names none or its table.column does not exist."""
    if reading is None:
        return None
    relation, column, sql = reading
    if not _exists(cur, relation, column):
        return None
    cur.execute(sql)
    row = cur.fetchone()
    value = row[0] if row else None
    return round(float(value), 1) if value is not None else 0.0


# Integrity checks (5.1 "critical data integrity violations"), the migration's (its manifest's
# monitor.integrity): each runs only where its objects exist, so the same list works before,
# during and after the migration. Each is a scan of a table, so it is left out where a
# validated foreign key already guarantees it (PostgreSQL enforces it on every write): the
# samples after the keys are validated stay cheap whatever the data's size.
# (name, relation, column, SQL, the foreign key that guarantees it: (column, referenced table)).
MONITOR_KEYS = ("probe", "event_lag", "integrity")


def migration_sql(migration_dir: str | None, file: str) -> str:
    """A SQL file the migration's manifest names: relative to its directory, or absolute."""
    path = file if os.path.isabs(file) or not migration_dir else os.path.join(migration_dir, file)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise MigrationError(f"cannot read {path}, which the migration's manifest names: "
                             f"{exc.strerror or exc} (migration_plan)") from exc


def monitor_checks(migration_dir: str | None, monitor: dict | None, probe_sql: str | None = None) -> dict[str, Any]:
    """The migration's monitoring, its manifest's monitor section (files relative to
    migration_dir), read and checked once: {probe_sql, event_lag, integrity}. probe_sql, when
    given, is the probe instead of monitor.probe (migration_monitor_probe_sql). An empty
    section: no probe, no event lag, no integrity checks."""
    monitor = monitor or {}
    if not isinstance(monitor, dict):
        raise MigrationError("the migration's monitor section must be a mapping (docs/writing-a-migration.md)")
    unknown = sorted(set(monitor) - set(MONITOR_KEYS))
    if unknown:
        raise MigrationError(f"unknown key(s) {', '.join(unknown)} in the migration's monitor section: the "
                             f"known ones are {', '.join(MONITOR_KEYS)} (docs/writing-a-migration.md)")
    probe = probe_sql or (migration_sql(migration_dir, monitor["probe"]).strip() if monitor.get("probe") else "")
    lag = None
    if monitor.get("event_lag"):
        e = monitor["event_lag"]
        if not isinstance(e, dict) or not all(e.get(k) for k in ("table", "column", "file")):
            raise MigrationError("the migration's monitor.event_lag needs table, column and file "
                                 "(docs/writing-a-migration.md)")
        lag = (str(e["table"]), str(e["column"]), migration_sql(migration_dir, e["file"]))
    checks: list[tuple] = []
    for check in monitor.get("integrity") or []:
        if not isinstance(check, dict) or not all(check.get(k) for k in ("name", "table", "file")):
            raise MigrationError("each of the migration's monitor.integrity checks needs name, table and file, "
                                 f"not {check!r} (docs/writing-a-migration.md)")
        fk = check.get("guaranteed_by") or None
        if fk is not None and (not isinstance(fk, dict) or not fk.get("column") or not fk.get("references")):
            raise MigrationError(f"monitor.integrity {check['name']!r}: guaranteed_by needs column and references "
                                 "(docs/writing-a-migration.md)")
        checks.append((str(check["name"]), str(check["table"]), check.get("column") or None,
                       migration_sql(migration_dir, check["file"]),
                       (str(fk["column"]), str(fk["references"])) if fk else None))
    return {"probe_sql": probe, "event_lag": lag, "integrity": checks}


# Is there a validated single-column foreign key from relation.column to referenced?
_VALIDATED_FK = """
SELECT EXISTS (
    SELECT 1 FROM pg_constraint AS c
      JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
     WHERE c.contype = 'f' AND c.convalidated AND cardinality(c.conkey) = 1
       AND c.conrelid = to_regclass(%s) AND c.confrelid = to_regclass(%s) AND a.attname = %s)"""


def integrity(cur: Any, checks: list[tuple], guaranteed: list[str] | None = None) -> dict[str, int]:
    """The violation count of each check that can be violated; the names of those a validated
    foreign key guarantees are appended to `guaranteed` instead of being counted."""
    found: dict[str, int] = {}
    for name, relation, column, sql, fk in checks:
        if not _exists(cur, relation, column):
            continue
        if fk is not None:
            cur.execute(_VALIDATED_FK, (relation, fk[1], fk[0]))
            if cur.fetchone()[0]:
                if guaranteed is not None:
                    guaranteed.append(name)
                continue
        cur.execute(sql)
        found[name] = int(cur.fetchone()[0])
    return found


def take_sample(conn: Any, probe_sql: str, probe_runs: int, probe_timeout_ms: int,
                with_integrity: bool = True, checks: dict[str, Any] | None = None) -> dict[str, Any]:
    """One sample of everything 2.1 and 4.2 name. conn must be in autocommit. checks: the
    migration's event lag and integrity checks (monitor_checks); none without them."""
    checks = checks or {}
    started = time.monotonic()
    sample: dict[str, Any] = {"at": utcnow()}
    with conn.cursor() as cur:
        server_version = conn.server_version
        sample["connections"] = connections(cur)
        sample["locks"] = lock_waits(cur, server_version)
        sample["longest_query"] = longest_query(cur)
        sample["xacts"] = xacts(cur)
        stmts = statements(cur)
        sample["pg_stat_statements"] = {"installed": stmts["installed"], "note": stmts.get("note")}
        sample["_statements"] = stmts.get("counters")
        sample["probe"] = probe_p95(cur, probe_sql, probe_runs, probe_timeout_ms)
        sample["database_size_bytes"] = database_size(cur)
        sample["replication"] = replication(cur)
        sample["event_lag_s"] = event_lag(cur, checks.get("event_lag"))
        if with_integrity:
            guaranteed: list[str] = []
            sample["integrity"] = integrity(cur, checks.get("integrity") or [], guaranteed)
            sample["integrity_by_constraint"] = guaranteed
    sample["sample_ms"] = round((time.monotonic() - started) * 1000.0, 1)
    return sample


def derive(sample: dict[str, Any], previous: dict[str, Any] | None, min_xacts: float) -> dict[str, Any]:
    """Rates over the interval since the previous sample: error rate and statements' p95."""
    metrics: dict[str, Any] = {"error_rate_pct": None, "error_rate_xacts": 0, "p95_ms": None}
    if previous is not None and previous.get("xacts"):
        d_commit = sample["xacts"]["commit"] - previous["xacts"]["commit"]
        d_rollback = sample["xacts"]["rollback"] - previous["xacts"]["rollback"]
        total = d_commit + d_rollback
        metrics["error_rate_xacts"] = total
        if total > 0:
            metrics["error_rate_pct"] = round(100.0 * d_rollback / total, 3)
        metrics["error_rate_judged"] = total >= min_xacts
    if sample.get("_statements") is not None:
        prev = previous.get("_statements") if previous else None
        metrics["p95_ms"] = statements_p95(prev, sample["_statements"])
    return metrics


def public_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample as reports and the ledger keep it (without pg_stat_statements' raw counters)."""
    return json_safe({k: v for k, v in sample.items() if not k.startswith("_")})


def evaluate(sample: dict[str, Any], metrics: dict[str, Any], thresholds: dict[str, float],
             baseline: dict[str, Any] | None, abort: dict[str, float],
             phase: str | None = None) -> list[dict[str, Any]]:
    """Alerts for every threshold crossed (4.2) and every abort criterion met (5.1)."""
    t = {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in (thresholds or {}).items()}}
    a = {**DEFAULT_ABORT, **{k: float(v) for k, v in (abort or {}).items()}}
    alerts: list[dict[str, Any]] = []

    def alert(metric: str, value: Any, limit: Any, message: str, stop: bool = False) -> None:
        alerts.append({"metric": metric, "value": value, "threshold": limit, "message": message,
                       "severity": "critical" if stop else "warning", "abort": stop,
                       "phase": phase, "at": sample["at"]})

    pool = sample["connections"]["utilisation_pct"]
    if pool > t["pool_utilisation_pct"]:
        alert("pool_utilisation_pct", pool, t["pool_utilisation_pct"],
              f"connection pool utilisation {pool}% ({sample['connections']['used']} of "
              f"{sample['connections']['max']} connections) is over {t['pool_utilisation_pct']:g}%")
    p95 = metrics.get("p95_ms")
    if p95 is not None and p95 > t["p95_ms"]:
        alert("p95_ms", p95, t["p95_ms"],
              f"query latency p95 {p95:g} ms (pg_stat_statements) is over {t['p95_ms']:g} ms")
    probe = sample["probe"]["p95_ms"]
    if probe > t["p95_ms"]:
        alert("probe_p95_ms", probe, t["p95_ms"], f"probe query p95 {probe:g} ms is over {t['p95_ms']:g} ms")
    rate = metrics.get("error_rate_pct")
    if rate is not None and metrics.get("error_rate_judged") and rate > t["error_rate_pct"]:
        alert("error_rate_pct", rate, t["error_rate_pct"],
              f"error rate {rate:g}% (transactions rolled back, {metrics['error_rate_xacts']} in the "
              f"interval) is over {t['error_rate_pct']:g}%")
    lag = sample.get("event_lag_s")
    if lag is not None and lag > t["event_lag_s"]:
        alert("event_lag_s", lag, t["event_lag_s"],
              f"event processing lag {lag:g} s (oldest unprocessed integration event) is over "
              f"{t['event_lag_s']:g} s")
    # 5.1: performance degraded by more than 50% against the pre-migration baseline.
    base = (baseline or {}).get("probe", {}).get("p95_ms")
    if base is not None:
        limit = base * (1 + a["degradation_pct"] / 100.0)
        if probe > limit and probe - base > a["min_delta_ms"]:
            pct = round(100.0 * (probe - base) / base, 1) if base else float("inf")
            alert("degradation_pct", pct, a["degradation_pct"],
                  f"performance degraded by {pct:g}% against the pre-migration baseline (probe p95 "
                  f"{probe:g} ms, baseline {base:g} ms; limit +{a['degradation_pct']:g}%)", stop=True)
    # 5.1: critical data integrity violations.
    for name, count in (sample.get("integrity") or {}).items():
        if count > 0:
            alert("integrity", count, 0, f"integrity violation: {count} {name}", stop=True)
    return alerts


def summary_line(sample: dict[str, Any], metrics: dict[str, Any]) -> str:
    c = sample["connections"]
    longest = sample.get("longest_query") or {}
    rate = metrics.get("error_rate_pct")
    p95 = "n/a" if metrics.get("p95_ms") is None else f"{metrics['p95_ms']:g} ms"
    parts = [
        f"connections {c['used']}/{c['max']} ({c['utilisation_pct']}%)",
        f"lock waits {sample['locks']['waiting']} (longest {sample['locks']['longest_wait_s']:g} s)",
        f"longest query {longest.get('seconds', 0):g} s",
        f"error rate {'n/a' if rate is None else f'{rate:g}%'}",
        f"p95 {p95} (probe {sample['probe']['p95_ms']:g} ms)",
        f"size {sample['database_size_bytes'] / 1048576:.1f} MiB",
    ]
    repl = sample.get("replication") or {}
    if repl.get("replicas"):
        parts.append(f"replication lag {repl.get('max_lag_s')} s")
    if sample.get("event_lag_s") is not None:
        parts.append(f"event lag {sample['event_lag_s']:g} s")
    return ", ".join(parts)


# --- taking samples: files under the run's monitoring workdir -----------------------------------
# Shared by pgmigrate_metrics (sample, sampler) and pgmigrate_ledger (finish with the after-phase
# sample, one module call for both).

def _append(path: str, record: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def _load(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def save_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, default=str)
    os.replace(tmp, path)


class Sampler:
    def __init__(self, p: dict) -> None:
        self.p = p
        self.conn = None
        self.min_xacts = float({**DEFAULT_THRESHOLDS, **p["thresholds"]}["error_rate_min_xacts"])
        os.makedirs(p["workdir"], mode=0o750, exist_ok=True)
        # The migration's probe and checks, read once (a bad manifest entry fails here, before any sample).
        self.checks = monitor_checks(p.get("migration_dir"), p.get("monitor"), p["probe_sql"])
        self.samples_file = os.path.join(p["workdir"], "samples.jsonl")
        self.alerts_file = os.path.join(p["workdir"], "alerts.jsonl")

    def _connection(self):
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.p, "pgmigrate-monitor")
            self.conn.autocommit = True  # reads only; never counted as rollbacks
        return self.conn

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def once(self, kind: str, previous: dict | None,
             with_integrity: bool = True) -> tuple[dict, dict, list[dict], dict]:
        """(raw sample, derived metrics, alerts, record written to samples.jsonl)."""
        p = self.p
        try:
            raw = take_sample(self._connection(), self.checks["probe_sql"],
                              p["probe_runs"], p["probe_timeout_ms"], with_integrity, self.checks)
        except MigrationError as exc:
            record = {"at": utcnow(), "phase": p["phase"], "kind": kind, "error": str(exc)}
            _append(self.samples_file, record)
            return {}, {}, [], record
        except Exception as exc:  # noqa: BLE001 - a failed sample is recorded, monitoring goes on
            self.close()
            record = {"at": utcnow(), "phase": p["phase"], "kind": kind,
                      "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
            _append(self.samples_file, record)
            return {}, {}, [], record
        metrics = derive(raw, previous, self.min_xacts)
        alerts = evaluate(raw, metrics, p["thresholds"], p["baseline"], p["abort"], p["phase"] or None)
        record = {**public_sample(raw), **metrics, "phase": p["phase"], "kind": kind}
        _append(self.samples_file, record)
        for alert in alerts:
            _append(self.alerts_file, {**alert, "kind": kind})
        return raw, metrics, alerts, record


def stop_sampler(workdir: str, phase: str, timeout_s: float = 15.0) -> dict | None:
    """Create the phase's stop file and wait for the sampler's done file: its result (samples,
    alerts, notifications), or None when it did not finish in time."""
    with open(os.path.join(workdir, f"sampler-{phase}.stop"), "w", encoding="utf-8") as handle:
        handle.write("stop\n")
    done = os.path.join(workdir, f"sampler-{phase}.done")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(done):
            return _load(done) or {"samples": 0, "alerts": [], "notifications": []}
        time.sleep(0.05)
    return None


def remove_job_file(path: str, timeout_s: float = 10.0) -> bool:
    """Remove the stopped sampler's async job file (what async_status mode=cleanup does) once
    Ansible's async wrapper has written the final result into it; False if it did not in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = _load(path)
        if job is not None and not job.get("started"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return True
        time.sleep(0.05)
    return False


def sample_once(p: dict) -> dict:
    """One sample now (pgmigrate_metrics action=sample, and pgmigrate_ledger's finish with a
    sample): the background sampler of the phase stopped first when asked, the sample appended
    to <workdir>/samples.jsonl, its alerts to alerts.jsonl."""
    sampled = stop_sampler(p["workdir"], p["phase"]) if p["stop_sampler"] else None
    job_removed = bool(sampled is not None and p["sampler_job_file"] and remove_job_file(p["sampler_job_file"]))
    sampler = Sampler(p)
    state_file = os.path.join(p["workdir"], "last_sample.json")
    previous = _load(state_file)
    try:
        raw, metrics, alerts, record = sampler.once(p["kind"], previous)
    finally:
        sampler.close()
    if raw:
        save_json(state_file, {"xacts": raw["xacts"], "_statements": raw.get("_statements")})
    return {"changed": False, "sample": record, "alerts": alerts,
            "abort": [a for a in alerts if a["abort"]],
            "sampler_stopped": (sampled is not None) if p["stop_sampler"] else None,
            # What the background sampler saw, so no async_status call is needed to collect it.
            "sampler_result": sampled or {}, "sampler_job_removed": job_removed,
            "summary": summary_line(raw, metrics) if raw else record.get("error", "no sample")}


# pgmigrate_metrics' sample options, for a sample taken by another module (pgmigrate_ledger).
SAMPLE_DEFAULTS: dict[str, Any] = {
    "workdir": None, "phase": "", "kind": "sample", "baseline": None, "thresholds": {}, "abort": {},
    "probe_sql": None, "probe_runs": 10, "probe_timeout_ms": 5000, "stop_sampler": False,
    "sampler_job_file": None, "migration_dir": None, "monitor": {},
}


def sample_with(connection: dict, options: dict) -> dict:
    """sample_once with pgmigrate_metrics' sample options (None = the default) and the caller's
    connection parameters."""
    given = {k: v for k, v in options.items() if v is not None and v != ""}
    unknown = sorted(set(given) - set(SAMPLE_DEFAULTS))
    if unknown:
        raise MigrationError(f"unknown sample option(s) {', '.join(unknown)}; see pgmigrate_metrics")
    p = {**connection, **SAMPLE_DEFAULTS, **given}
    if not p["workdir"] or int(p["probe_runs"]) < 1:
        raise MigrationError("a sample needs workdir and probe_runs of at least 1 (migration_monitor_* variables)")
    try:
        return sample_once(p)
    except OSError as exc:
        raise MigrationError(f"cannot write monitoring files under {p['workdir']}: {exc.strerror or exc} "
                             "(check migration_report_dir)") from exc


def phase_monitoring(before: dict, sampled: dict | None) -> dict:
    """The monitoring part of a phase's ledger record: the samples before and after the phase,
    the pre-migration baseline (phase 1's record keeps it), how many background samples were
    taken, and every alert of the phase (before, during, after). `before` holds before, baseline
    and before_alerts; `sampled` is sample_once's result (None without monitoring)."""
    sampled = sampled or {}
    sampler = sampled.get("sampler_result") or {}
    return {"before": before.get("before") or {}, "after": sampled.get("sample") or {},
            "baseline": before.get("baseline"), "background_samples": sampler.get("samples", 0),
            "alerts": [*(before.get("before_alerts") or []), *(sampler.get("alerts") or []),
                       *(sampled.get("alerts") or [])]}


# --- Prometheus: the application's own signals ---------------------------------------------------

def finite_number(value) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def prometheus_query(url: str, promql: str, timeout_s: float) -> dict:
    """One PromQL instant query; {value, error, query}. Only a single finite sample is a value.
    The one home of the mechanic: the pgmigrate_prometheus module's readings (the checkpoints,
    the watch) and the throttle's application signals."""
    reading: dict = {"query": promql, "value": None, "error": None}
    target = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with open_url(target, http_agent="pgmigrate", timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            reading["error"] = f"Prometheus answered {exc.code}: {json.load(exc).get('error')}"
        except ValueError:
            reading["error"] = f"Prometheus answered {exc.code}"
        return reading
    except (urllib.error.URLError, OSError, ValueError, UrlsConnectionError) as exc:
        reading["error"] = f"Prometheus unreachable or unreadable: {getattr(exc, 'reason', exc)}"
        return reading
    data = body.get("data") or {}
    result = data.get("result")
    if body.get("status") != "success":
        reading["error"] = f"query failed: {body.get('error')}"
    elif data.get("resultType") == "scalar":
        reading["value"] = finite_number(result[1])
    elif not result:
        reading["error"] = "the query returned nothing (no such series, or no traffic in its window)"
    elif len(result) > 1:
        reading["error"] = f"the query returned {len(result)} series; it must return one (aggregate it)"
    else:
        reading["value"] = finite_number(result[0]["value"][1])
        if reading["value"] is None:
            reading["error"] = f"the query returned {result[0]['value'][1]} (no traffic in its window?)"
    return reading
