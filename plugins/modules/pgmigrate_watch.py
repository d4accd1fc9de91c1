#!/usr/bin/python
# The 48-hour watch after the migration (strategy 4.2): each run takes one sample of the
# strategy's metrics, the migration's queries on the tables it created (its manifest's watch
# section: for HT-036 integration event processing rate, lag and failures, workflow execution
# success rate, handover package delivery rate, error types; resource trends of the migrated
# tables), plus the database's own health sample
# (pgmigrate_monitor), the application's HTTP checks and its Prometheus figures when given.
# Alerts on the 4.2 thresholds; an alert that repeats (escalate_after samples in a row) or a
# critical one is marked for escalation. Samples are kept in migration_ledger.watch_samples
# (created on the first run after phase 6). Every run rewrites the trend report (Markdown and one
# PNG per metric). Once `hours` have passed since phase 6 it records the end once and samples no
# more.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_watch
short_description: One sample of the 48-hour post-migration watch (strategy 4.2), its alerts and the trend report
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - Each run takes one sample of the strategy's metrics (integration event processing rate, lag
    and failures, workflow execution success rate, handover package delivery rate, error rates,
    resource trends of the migrated tables), the database's own health sample, and the
    application's HTTP checks and Prometheus figures when given. Alerts on the 4.2 thresholds; an
    alert that repeats I(escalate_after) samples in a row, or a critical one, is marked for
    escalation.
  - Refuses a database whose phase 6 is not applied. Creates migration_ledger.watch_samples when
    missing, records the sample, and rewrites I(report_dir)/watch-<host>.md with a PNG per
    metric in I(report_dir)/watch-<host>/. Once I(hours) have passed since phase 6 it records the
    end once and samples no more. In check mode it samples and records nothing.
options:
  report_dir:
    description: Where the trend report goes.
    type: path
    required: true
  host:
    description: The inventory host, in the report's name.
    type: str
    required: true
  run_id:
    description: The run's id, recorded with the sample.
    type: str
    required: true
  hours:
    description: How long the watch lasts after phase 6 finished, in hours.
    type: float
    default: 48
  escalate_after:
    type: int
    default: 2
    description: Samples in a row an alert must repeat to escalate (at least 1).
  thresholds:
    description: Alert thresholds over the defaults (see M(agency.pgmigrate.pgmigrate_metrics)).
    type: dict
    default: {}
  abort:
    description: Degradation criteria over the defaults (see M(agency.pgmigrate.pgmigrate_metrics)).
    type: dict
    default: {}
  probe_sql:
    description: >-
      The read-only probe query; default - the migration's probe (I(monitor)'s C(probe)), else no
      probe.
    type: str
  migration_dir:
    description: The migration's directory; the files I(monitor) and I(watch) name are relative to it.
    type: path
  monitor:
    description: >-
      The migration's monitoring, its manifest's C(monitor) section (C(probe), C(event_lag),
      C(integrity); see M(agency.pgmigrate.pgmigrate_metrics)). Empty - no probe, no event lag, no
      integrity checks.
    type: dict
    default: {}
  watch:
    description:
      - The migration's watch, its manifest's C(watch) section (docs/writing-a-migration.md).
        Empty - the engine's metrics only.
      - C(tables) - the migrated tables whose size, live rows and dead tuples each sample records.
      - C(queries) - each a C(file) returning rows of (metric, value), run with the psql variables
        C(:'since') (the previous sample's time) and C(:'interval_s') where every object it
        C(requires) exists (C(table) or C(table.column)) and none it runs C(unless) exists; the
        names in its C(details) are recorded as details of the sample, its C(note) when it runs.
      - C(error_types) - the same, returning rows of (error type, count).
      - C(plots) - the trend report's plots of the migration's metrics, each C(key), C(title),
        C(unit) and the threshold drawn (C(threshold), a monitoring threshold's name).
    type: dict
    default: {}
  probe_runs:
    description: How many times the probe runs per sample (at least 1).
    type: int
    default: 10
  watch_sql:
    type: path
    required: true
    description: The watch table's DDL (C(files/sql/ledger/watch.sql)).
  app_checks:
    type: list
    elements: dict
    default: []
    description: Results of the application's HTTP checks, recorded and alerted on.
  prometheus:
    type: dict
    default: {}
    description: >-
      The application's figures read from Prometheus (M(agency.pgmigrate.pgmigrate_prometheus)
      C(query)).
  queue_age_alert_s:
    description: >-
      Alert when the oldest entry of the transition's queue has waited longer than this, in
      seconds (critical when nothing drains the queue); while the transition is open, nothing
      draining it is an alert of its own.
    type: float
    default: 60
  plots:
    description: Draw a PNG per metric (needs matplotlib on the controller).
    type: bool
    default: true
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Take one sample of the watch (run it hourly, from cron or AWX)
  agency.pgmigrate.pgmigrate_watch:
    report_dir: reports
    host: "{{ inventory_hostname }}"
    run_id: "{{ run_id }}"
    watch_sql: files/sql/ledger/watch.sql
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: watch_result
"""

RETURN = r"""
over:
  description: Whether I(hours) have passed since phase 6 finished.
  returned: always
  type: bool
phase6_finished_at:
  description: When phase 6 finished (the watch's start).
  returned: always
  type: str
metrics:
  description: The sample's metrics.
  returned: when a sample was taken
  type: dict
alerts:
  description: >-
    The alerts of this sample, each with C(metric), C(severity), C(message), C(repeat) and
    C(escalate).
  returned: always
  type: list
  elements: dict
escalations:
  description: The alerts marked for escalation.
  returned: always
  type: list
  elements: dict
announce_over:
  description: Whether this run recorded the end of the watch (announce it once).
  returned: always
  type: bool
created_table:
  description: Whether migration_ledger.watch_samples was created.
  returned: always
  type: bool
summary:
  description: The sample, or the end of the watch, in one line.
  returned: always
  type: str
report:
  description: The trend report's paths (C(md), C(json), C(plots)).
  returned: when not in check mode
  type: dict
"""

import datetime
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils import pgmigrate_markdown as md
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    applied_phases,
    connect,
    fetch_dicts,
    json_safe,
    ledger_exists,
    ledger_state,
    render,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain import queue_state
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    DEFAULT_THRESHOLDS,
    applies,
    derive,
    evaluate,
    migration_sql,
    monitor_checks,
    named_values,
    public_sample,
    take_sample,
    write_report,
)

TABLE = f"{LEDGER_SCHEMA}.watch_samples"
WATCH_KEYS = ("tables", "queries", "error_types", "plots")

# The metrics of the trend report: key, title, unit, the threshold key (DEFAULT_THRESHOLDS) if any:
# the engine's, with the migration's (its manifest's watch.plots) after the error rates.
METRICS_BEFORE: list[tuple[str, str, str, str | None]] = [
    ("p95_ms", "Query latency p95 (pg_stat_statements)", "ms", "p95_ms"),
    ("probe_p95_ms", "Probe query p95", "ms", "p95_ms"),
    ("app_p95_ms", "API response time p95 (Prometheus)", "ms", "p95_ms"),
    ("error_rate_pct", "Error rate (transactions rolled back)", "%", "error_rate_pct"),
    ("app_error_pct", "API error ratio (Prometheus)", "%", "error_rate_pct"),
]
METRICS_AFTER: list[tuple[str, str, str, str | None]] = [
    ("pool_utilisation_pct", "Connection pool utilisation", "%", "pool_utilisation_pct"),
    ("database_size_mib", "Database size", "MiB", None),
    ("migrated_dead_tuples", "Dead tuples of the migrated tables", "rows", None),
    ("app_checks_failed", "Application endpoint checks failing", "checks", None),
    ("transition_queue_depth", "Transition queue depth (entries waiting)", "entries", None),
    ("transition_queue_age_s", "Transition queue: oldest entry's age", "s", "queue_age_s"),
]


def watch_plan(migration_dir: str | None, watch: dict | None) -> dict:
    """The migration's watch (its manifest's watch section), its files read and checked once:
    {tables, queries, error_types, metrics}, metrics the trend report's plots in order."""
    watch = watch or {}
    if not isinstance(watch, dict):
        raise MigrationError("the migration's watch section must be a mapping (docs/writing-a-migration.md)")
    unknown = sorted(set(watch) - set(WATCH_KEYS))
    if unknown:
        raise MigrationError(f"unknown key(s) {', '.join(unknown)} in the migration's watch section: the known "
                             f"ones are {', '.join(WATCH_KEYS)} (docs/writing-a-migration.md)")

    def queries(key: str) -> list[dict]:
        found = []
        for entry in watch.get(key) or []:
            if not isinstance(entry, dict) or not entry.get("file"):
                raise MigrationError(f"each of the migration's watch.{key} needs a file, not {entry!r} "
                                     "(docs/writing-a-migration.md)")
            found.append({**entry, "sql": migration_sql(migration_dir, entry["file"])})
        return found

    plots = []
    for entry in watch.get("plots") or []:
        if not isinstance(entry, dict) or not entry.get("key") or not entry.get("title"):
            raise MigrationError(f"each of the migration's watch.plots needs key and title, not {entry!r} "
                                 "(docs/writing-a-migration.md)")
        plots.append((str(entry["key"]), str(entry["title"]), str(entry.get("unit") or ""),
                      entry.get("threshold") or None))
    return {"tables": [str(t) for t in watch.get("tables") or []], "queries": queries("queries"),
            "error_types": queries("error_types"), "metrics": METRICS_BEFORE + plots + METRICS_AFTER}


def _scalar(cur, sql: str, args=None):
    cur.execute(sql, args)
    row = cur.fetchone()
    return row[0] if row else None


def table_figures(cur, since: str | None, plan: dict) -> tuple[dict, dict]:
    """(metrics, details) from the migration's watch queries, over the interval since `since`
    (the previous sample; the end of phase 6 for the first)."""
    m: dict = {}
    d: dict = {}
    interval_s = float(_scalar(cur, "SELECT extract(epoch FROM clock_timestamp() - %s::timestamptz)", (since,)))
    interval_s = max(interval_s, 1.0)
    d["interval_s"] = round(interval_s, 1)
    variables = {"since": since, "interval_s": interval_s}
    for query in plan["queries"]:
        if not applies(cur, query):
            continue
        if query.get("note"):
            d["note"] = query["note"]
        for name, value in named_values(cur, render(query["sql"], variables)).items():
            (d if name in (query.get("details") or []) else m)[name] = value
    # Error types: what failed in the interval, by kind.
    d["error_types"] = {}
    for query in plan["error_types"]:
        if applies(cur, query):
            d["error_types"].update(named_values(cur, render(query["sql"], variables)))
    tables = fetch_dicts(cur, """
        SELECT c.relname AS table, pg_total_relation_size(c.oid) AS total_bytes,
               coalesce(s.n_dead_tup, 0) AS dead_tuples, coalesce(s.n_live_tup, 0) AS live_tuples
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE n.nspname = current_schema() AND c.relname = ANY(%s) ORDER BY c.relname""", (plan["tables"],))
    d["tables"] = tables
    m["migrated_dead_tuples"] = sum(int(t["dead_tuples"]) for t in tables)
    return m, d


def watch_alerts(sample: dict, metrics: dict, p: dict, baseline: dict | None, previous_alerts: list[dict]) -> list:
    """The 4.2 thresholds on the database's sample (pgmigrate_monitor.evaluate, with the 5.1
    criteria) and on the application's figures; each alert carries how many samples in a row it
    has been raised and whether it escalates."""
    t = {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in p["thresholds"].items()}}
    alerts = evaluate(sample, metrics, p["thresholds"], baseline, p["abort"], "watch")

    def alert(metric: str, value, limit, message: str, critical: bool = False) -> None:
        alerts.append({"metric": metric, "value": value, "threshold": limit, "message": message,
                       "severity": "critical" if critical else "warning", "abort": False, "phase": "watch",
                       "at": sample["at"]})

    for check in p["app_checks"]:
        if not check.get("ok"):
            alert(f"app_check:{check.get('name')}", check.get("status"), check.get("expected_status"),
                  f"application check {check.get('name')} failed: {check.get('reason')}", critical=True)
    prom = p["prometheus"] or {}
    for key, limit_key, label in (("p95_ms", "p95_ms", "API response time p95"),
                                  ("error_pct", "error_rate_pct", "API error ratio")):
        reading = prom.get(key)
        if not isinstance(reading, dict):
            continue
        if reading.get("value") is None:
            alert(f"prometheus_{key}", None, t[limit_key],
                  f"{label} unknown: {reading.get('error') or 'the query returned nothing'} "
                  "(never taken as healthy)")
        elif reading["value"] > t[limit_key]:
            alert(f"prometheus_{key}", reading["value"], t[limit_key],
                  f"{label} {reading['value']:g} (Prometheus) is over {t[limit_key]:g}")
    queue = p.get("_queue") or {}
    if queue.get("present"):
        nothing = queue["open"] and queue["drained_by"]["kind"] == "nothing"
        if queue["oldest_age_s"] > p["queue_age_alert_s"]:
            alert("transition_queue_age_s", queue["oldest_age_s"], p["queue_age_alert_s"],
                  f"the transition's queue is behind: its oldest entry waits {queue['oldest_age_s']:g} s "
                  f"(over {p['queue_age_alert_s']:g}), {queue['depth']} entries; {queue['says']}", critical=nothing)
        elif nothing and queue["depth"]:
            alert("transition_queue_drained", 0, 1,
                  f"nothing drains the transition's queue ({queue['depth']} entries): start it with "
                  "playbooks/drain.yml -e drain_state=started")
    before = {a["metric"]: int(a.get("repeat", 1)) for a in previous_alerts}
    for a in alerts:
        a["repeat"] = before.get(a["metric"], 0) + 1
        a["escalate"] = a["severity"] == "critical" or a["repeat"] >= p["escalate_after"]
    return alerts


def flatten(sample: dict, derived: dict, tables: dict, p: dict) -> dict:
    prom = p["prometheus"] or {}
    m = {"p95_ms": derived.get("p95_ms"), "probe_p95_ms": sample["probe"]["p95_ms"],
         "error_rate_pct": derived.get("error_rate_pct") if derived.get("error_rate_judged") else None,
         "error_rate_xacts": derived.get("error_rate_xacts"),
         "event_lag_s": sample.get("event_lag_s"),
         "pool_utilisation_pct": sample["connections"]["utilisation_pct"],
         "connections_used": sample["connections"]["used"],
         "database_size_mib": round(sample["database_size_bytes"] / 1048576, 2),
         "app_checks_failed": sum(1 for c in p["app_checks"] if not c.get("ok")) if p["app_checks"] else None,
         "app_p95_ms": (prom.get("p95_ms") or {}).get("value") if prom else None,
         "app_error_pct": (prom.get("error_pct") or {}).get("value") if prom else None}
    queue = p.get("_queue") or {}
    if queue.get("present"):
        m.update(transition_queue_depth=queue["depth"], transition_queue_age_s=queue["oldest_age_s"],
                 transition_queue_drained=int(queue["drained_by"]["kind"] != "nothing"))
    return {**m, **tables}


def plot(path: str, title: str, unit: str, points: list[tuple[float, float]], limit: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3), dpi=90)
    try:
        if points:
            ax.plot([x for x, _y in points], [y for _x, y in points], marker="o", linewidth=1.5)
        if limit is not None:
            ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"threshold {limit:g}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("hours since phase 6")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)
    finally:
        plt.close(fig)


def trend_report(p: dict, start: datetime.datetime, rows: list[dict], over: bool) -> dict:
    """Rewrite <report_dir>/watch-<host>.md and its plots from every sample of the watch so far."""
    base = os.path.join(p["report_dir"], f"watch-{p['host']}")
    os.makedirs(base, mode=0o750, exist_ok=True)
    thresholds = {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in p["thresholds"].items()},
                  "queue_age_s": p["queue_age_alert_s"]}
    samples = [r for r in rows if r["kind"] == "sample"]
    end = start + datetime.timedelta(hours=p["hours"])
    out = [f"# The 48-hour watch: {p['host']}", "",
           f"Phase 6 finished {start.isoformat()}; the watch runs until {end.isoformat()} "
           f"({p['hours']:g} h, strategy 4.2). {len(samples)} sample(s) so far.", ""]
    if over:
        out += [f"**The watch is over**: {p['hours']:g} hours have passed since phase 6; no more samples are "
                "taken.", ""]
    alerts = [a for r in samples for a in (r["alerts"] or [])]
    escalations = [e for r in samples for e in (r["escalations"] or [])]
    out += [f"Alerts raised: {len(alerts)}; escalated: {len(escalations)}.", ""]
    if alerts:
        out += md.table(["at", "metric", "severity", "repeat", "escalated", "message"],
                        [(str(a["at"]), a["metric"], a["severity"], str(a.get("repeat", 1)),
                          "yes" if a.get("escalate") else "no", str(a["message"])) for a in alerts], "lllrll")
        out.append("")
    out += ["## Metrics", ""]
    metrics = []
    plots = {}
    for key, title, unit, limit_key in p["_plan"]["metrics"]:
        points = []
        for r in samples:
            value = (r["metrics"] or {}).get(key)
            if value is not None:
                hours = (datetime.datetime.fromisoformat(str(r["taken_at"])) - start).total_seconds() / 3600
                points.append((round(hours, 4), float(value)))
        limit = thresholds.get(limit_key) if limit_key else None
        if not points:
            metrics.append((title, "n/a", "", "", "" if limit is None else f"{limit:g}", "no data"))
            continue
        name = f"{key}.png"
        if p["plots"]:
            plot(os.path.join(base, name), f"{title} ({unit})", unit, points, limit)
            plots[key] = os.path.join(base, name)
        values = [y for _x, y in points]
        metrics.append((f"{title} ({unit})", f"{values[-1]:g}", f"{min(values):g}", f"{max(values):g}",
                        "" if limit is None else f"{limit:g}", md.Markdown(f"![{key}](watch-{p['host']}/{name})")))
    out += md.table(["metric", "latest", "min", "max", "threshold", "plot"], metrics, "lrrrrl")
    last = samples[-1] if samples else None
    if last:
        types = (last["details"] or {}).get("error_types") or {}
        out += ["", "## The latest sample", "", f"Taken {last['taken_at']}.", "",
                "Error types in its interval: " + (", ".join(f"{k}: {v}" for k, v in types.items()) or "none") + ".",
                ""]
        out += md.table(["table", "size", "live rows", "dead tuples"],
                        [(t["table"], f"{int(t['total_bytes']) / 1048576:.2f} MiB", str(t["live_tuples"]),
                          str(t["dead_tuples"])) for t in (last["details"] or {}).get("tables", [])], "lrrr")
        checks = (last["details"] or {}).get("app_checks") or []
        if checks:
            out += ["", "Application checks: " + "; ".join(
                f"{c.get('name')} {'ok' if c.get('ok') else 'FAILED: ' + str(c.get('reason'))}" for c in checks) + "."]
    md_path = os.path.join(p["report_dir"], f"watch-{p['host']}.md")
    write_report(md_path, "\n".join(out) + "\n")
    data = os.path.join(p["report_dir"], f"watch-{p['host']}.json")
    write_report(data, json.dumps(json_safe({"host": p["host"], "phase6_finished_at": start, "hours": p["hours"],
                                             "over": over, "samples": rows}), indent=2, default=str) + "\n")
    return {"md": md_path, "json": data, "plots": plots}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            report_dir=dict(type="path", required=True),
            host=dict(type="str", required=True),
            run_id=dict(type="str", required=True),
            hours=dict(type="float", default=48),
            escalate_after=dict(type="int", default=2),
            thresholds=dict(type="dict", default={}),
            abort=dict(type="dict", default={}),
            probe_sql=dict(type="str"),
            probe_runs=dict(type="int", default=10),
            migration_dir=dict(type="path"),
            monitor=dict(type="dict", default={}),
            watch=dict(type="dict", default={}),
            watch_sql=dict(type="path", required=True),
            app_checks=dict(type="list", elements="dict", default=[]),
            prometheus=dict(type="dict", default={}),
            plots=dict(type="bool", default=True),
            queue_age_alert_s=dict(type="float", default=60),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["hours"] <= 0 or p["escalate_after"] < 1 or p["probe_runs"] < 1 or p["queue_age_alert_s"] <= 0:
        module.fail_json(msg="watch_hours and watch_queue_age_alert_s must be positive, watch_escalate_after and "
                             "probe_runs at least 1")
    try:
        result = run(module)
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot write the trend report under {p['report_dir']}: {exc.strerror or exc} "
                             "(check migration_report_dir)")
    module.exit_json(**result)


def run(module: AnsibleModule) -> dict:
    p = module.params
    # The migration's monitoring and watch, read and checked before anything is touched.
    checks = monitor_checks(p["migration_dir"], p["monitor"], p["probe_sql"])
    p["_plan"] = watch_plan(p["migration_dir"], p["watch"])
    plotted = {metric[0] for metric in p["_plan"]["metrics"]}
    conn = connect(p, "pgmigrate-watch")
    try:
        conn.autocommit = True  # reads never count as rollbacks; writes are single statements
        state = ledger_state(conn) if ledger_exists(conn) else {}
        applied = applied_phases(state)
        if "6" not in applied:
            raise MigrationError(
                f"the watch starts once phase 6 is applied; this database's ledger says applied: "
                f"{', '.join(applied) or 'none'}. Run playbooks/migrate.yml -e phase=all first. Nothing was changed.")
        start = datetime.datetime.fromisoformat(str(state["6"]["finished_at"]))
        with conn.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            now = cur.fetchone()[0]
            over = now >= start + datetime.timedelta(hours=p["hours"])
            exists = bool(_scalar(cur, "SELECT to_regclass(%s) IS NOT NULL", (TABLE,)))
            rows = fetch_dicts(cur, f"SELECT * FROM {TABLE} WHERE taken_at >= %s ORDER BY id", (start,)) \
                if exists else []
            result: dict = {"changed": False, "over": over, "phase6_finished_at": str(start), "alerts": [],
                            "escalations": [], "announce_over": False, "created_table": False}
            if over:
                if not any(r["kind"] == "over" for r in rows) and not module.check_mode:
                    if not exists:
                        with open(p["watch_sql"], encoding="utf-8") as handle:
                            cur.execute(handle.read())
                        result["created_table"] = True
                    cur.execute(f"INSERT INTO {TABLE} (kind, run_id) VALUES ('over', %s) RETURNING *",
                                (p["run_id"],))
                    rows.append(fetch_row(cur))
                    result.update(changed=True, announce_over=True)
                result["summary"] = (f"the watch is over: {p['hours']:g} h have passed since phase 6 finished "
                                     f"({start.isoformat()}); no sample taken")
            else:
                previous = next((r for r in reversed(rows) if r["kind"] == "sample"), None)
                sample = take_sample(conn, checks["probe_sql"], p["probe_runs"], 5000, checks=checks)
                prev_counters = (previous or {}).get("counters") or None
                derived = derive(sample, prev_counters, float({**DEFAULT_THRESHOLDS, **p["thresholds"]}
                                                              ["error_rate_min_xacts"]))
                since = str(previous["taken_at"]) if previous else str(start)
                tables_m, details = table_figures(cur, since, p["_plan"])
                # The transition's queue, while phase 3's transition defers work into it.
                p["_queue"] = queue_state(conn)
                if p["_queue"]["present"]:
                    details["transition_queue"] = p["_queue"]
                metrics = flatten(sample, derived, tables_m, p)
                baseline = ((state.get("1") or {}).get("details") or {}).get("monitoring", {}).get("baseline")
                alerts = watch_alerts(sample, derived, p, baseline, (previous or {}).get("alerts") or [])
                escalations = [a for a in alerts if a["escalate"]]
                details.update(sample=public_sample(sample), app_checks=p["app_checks"], prometheus=p["prometheus"])
                counters = {"xacts": sample["xacts"], "_statements": sample.get("_statements")}
                result.update(metrics=metrics, details=json_safe(details), alerts=alerts, escalations=escalations)
                if not module.check_mode:
                    if not exists:
                        with open(p["watch_sql"], encoding="utf-8") as handle:
                            cur.execute(handle.read())
                        result["created_table"] = True
                    cur.execute(
                        f"""INSERT INTO {TABLE} (run_id, metrics, details, alerts, escalations, counters)
                            VALUES (%s, %s, %s, %s, %s, %s) RETURNING *""",
                        (p["run_id"], json.dumps(json_safe(metrics)), json.dumps(json_safe(details)),
                         json.dumps(json_safe(alerts)), json.dumps(json_safe(escalations)),
                         json.dumps(json_safe(counters))))
                    rows.append(fetch_row(cur))
                    result["changed"] = True
                hours_in = (now - start).total_seconds() / 3600
                result["summary"] = (
                    f"watch sample {sum(1 for r in rows if r['kind'] == 'sample')} at {hours_in:.1f} h of "
                    f"{p['hours']:g} h: " + ", ".join(f"{k} {v:g}" for k, v in metrics.items()
                                                      if isinstance(v, (int, float)) and k in plotted)
                    + f"; {len(alerts)} alert(s), {len(escalations)} escalated")
    finally:
        conn.close()
    if not module.check_mode:
        result["report"] = trend_report(p, start, json_safe(rows), over)
    return json_safe(result)


def fetch_row(cur) -> dict:
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone(), strict=True))


if __name__ == "__main__":
    main()
