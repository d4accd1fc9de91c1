#!/usr/bin/python
# The run's report: <dir>/<stem>.json and <stem>.md, for every run of migrate, rollback and
# rehearse: phases (from the ledger, by run id), durations, rows, the validator's results, the
# metric samples and alerts (from the monitoring files), approvals and notifications. Never fails
# because the database is gone: the ledger part then says why it is missing.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_report
short_description: Write the run's JSON and Markdown reports
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - Writes I(report_dir)/I(stem).json and I(stem).md for every run of migrate, rollback and
    rehearse - the phases (from the ledger, by run id), durations, rows, the validator's results,
    the metric samples and alerts (from the monitoring files in I(workdir)), approvals and
    notifications. Any key naming a password, token, secret or webhook URL is masked, at any depth.
  - Never fails because the database is gone - the ledger part then says why it is missing.
  - Never reports a change (a report is the run's record, like a log); in check mode nothing is written.
options:
  report_dir:
    description: Where the reports go (created 0750; files 0640).
    type: path
    required: true
  stem:
    description: The reports' file name without extension (no directories).
    type: str
    required: true
  playbook:
    description: The playbook that ran.
    type: str
    required: true
  outcome:
    description: How the run ended.
    type: str
    required: true
    choices: [succeeded, failed, stopped, nothing to do]
  result:
    description:
      - "How the run ended, the report's one field for a pipeline: C(completed); C(refused) (the
        preflight refused it, nothing changed); C(failed) (in I(result_phase); the same command
        resumes); C(stopped) (an abort criterion, an alert or a no-go, at the checkpoint before
        I(result_phase))."
      - Empty - derived from I(outcome) (C(succeeded) and C(nothing to do) are C(completed)).
    type: str
    default: ""
    choices: ["", completed, refused, failed, stopped]
  result_phase:
    description: The phase a C(failed) run failed in, or before which a C(stopped) run stopped.
    type: str
    default: ""
  reason:
    description: Why it failed or stopped.
    type: str
    default: ""
  context:
    description: >-
      The run's context (run id, operator, host, environment, phases); its C(run_id) selects the
      ledger records.
    type: dict
    default: {}
  workdir:
    description: The run's monitoring directory (samples.jsonl, alerts.jsonl); unset - no samples.
    type: path
  notify_log:
    description: The run's notification log, listed in the report.
    type: path
  approvals:
    description: The approvals the run went on.
    type: list
    elements: dict
    default: []
  approved_by:
    description: Who approved the run.
    type: str
    default: ""
  baseline:
    description: The pre-migration baseline sample.
    type: dict
  phase_titles:
    description: Phase number to title.
    type: dict
    default: {}
  extra:
    description: More sections for the JSON report.
    type: dict
    default: {}
  read_ledger:
    description: Read the run's ledger records (false when the database is known to be gone).
    type: bool
    default: true
  announcement:
    type: dict
    description:
      - "C({src, dest}): a template (an absolute path - the migration's C(report.announcement) - or
        one in the role's templates/) rendered with the task's variables and
        C(report_written), this module's result, and written to C(dest) (0640). Done by the action
        plugin, in process; the module alone ignores it."
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Write the run's report
  agency.pgmigrate.pgmigrate_report:
    report_dir: reports
    stem: "migrate-db1-{{ run_id }}"
    playbook: migrate
    outcome: succeeded
    context: {run_id: "{{ run_id }}", host: db1, environment: staging}
    workdir: "reports/monitor-{{ run_id }}"
    notify_log: reports/notifications.jsonl
    db_host: db.example.internal
    db_name: app
    db_user: migrator
"""

RETURN = r"""
paths:
  description: The report files (C(json), C(md)).
  returned: always
  type: dict
  sample: {json: reports/migrate-db1-20260101T120000.json, md: reports/migrate-db1-20260101T120000.md}
ledger_state:
  description: The ledger's last finished record of every phase.
  returned: when not in check mode
  type: dict
phases:
  description: The run's ledger records.
  returned: when not in check mode
  type: list
  elements: dict
alerts:
  description: The run's monitoring alerts.
  returned: when not in check mode
  type: list
  elements: dict
validation:
  description: The validator's results (C(passed), C(failed), C(checks)).
  returned: when not in check mode
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils import pgmigrate_markdown as md
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    connect,
    fetch_dicts,
    json_safe,
    ledger_state,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    report_pair_paths,
    utcnow,
    write_report_pair,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_notify import read_log
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import merge_summaries

# What each result asks of whoever reads the report (docs/operations.md#how-a-run-ended).
RESULT_NEXT = {
    "completed": "nothing: every selected phase is applied",
    "refused": "fix what the reason names, then run the same command; nothing was changed",
    "failed": "fix the cause, then run the same command: applied phases are skipped, the failed one resumes",
    "stopped": "read the alerts, then run the same command to go on, or roll back",
}

SECRET_KEYS = ("password", "token", "secret", "webhook_url", "passwd")


def scrub(value):
    """Drop any key that names a secret, at any depth (defence in depth: none should be there)."""
    if isinstance(value, dict):
        return {k: ("********" if any(s in str(k).lower() for s in SECRET_KEYS) else scrub(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def read_jsonl(path: str | None) -> list[dict]:
    return read_log(path) if path else []


def ledger_part(module, run_id: str) -> dict:
    try:
        conn = connect(module.params, "pgmigrate-report")
    except MigrationError as exc:
        return {"error": f"ledger unreadable: {exc}", "phases": [], "state": {}}
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
            if not cur.fetchone()[0]:
                return {"error": "no ledger in this database yet", "phases": [], "state": {}}
            phases = fetch_dicts(cur, f"""
                SELECT id, phase, direction, status, started_at, finished_at,
                       round(extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at)::numeric, 2)
                         AS duration_s,
                       operator, approved_by, environment, rows_affected, error, details
                  FROM {LEDGER_SCHEMA}.history WHERE run_id = %s ORDER BY id""", (run_id,))
        for row in phases:
            row["duration_s"] = float(row["duration_s"])
        return {"phases": json_safe(phases), "state": ledger_state(conn)}
    except Exception as exc:  # noqa: BLE001 - the report is written whatever happens
        return {"error": f"ledger unreadable: {str(exc).strip().splitlines()[0]}", "phases": [], "state": {}}
    finally:
        conn.close()


def validation_part(phases: list[dict], state: dict) -> dict | None:
    """The validator's results: phase 6 of this run, else the latest applied phase 6."""
    mine = [p for p in phases if p["phase"] == "6" and p["direction"] == "apply"]
    details = (mine[-1] if mine else state.get("6", {})).get("details") or {}
    if "passed" not in details:
        return None
    result = {"passed": details.get("passed"), "failed": details.get("failed", []),
              "report": details.get("report"), "from_this_run": bool(mine)}
    try:
        with open(details.get("report") or "", encoding="utf-8") as handle:
            result["checks"] = json.load(handle).get("checks", [])
    except (OSError, ValueError):
        result["checks"] = None
    return result


def throttled(p: dict) -> list[tuple[str, dict]]:
    """(what, throttle summary) of a phase's record: phase 3's batches and inserts, the
    rollback's batches (module_utils/pgmigrate_throttle.py)."""
    d = p.get("details") or {}
    t = d.get("throttle") or {}
    found = [(name, t[key]) for key, name in (("backfill", "backfill batches"), ("inserts", "inserts"))
             if isinstance(t.get(key), dict)]
    b = (d.get("batches") or {}).get("throttle")
    if isinstance(b, dict):
        found.append(("reset batches", b))
    return found


def throttle_section(phases: list[dict]) -> list[str]:
    rows = [(p, what, t) for p in phases for what, t in throttled(p)]
    if not rows:
        return []
    out = ["## Throttle", "", "How long the batches yielded to the application, and why.", "",
           *md.table(["phase", "direction", "batches of", "throttled (s)", "slowed down (s)", "paused (s)",
                      "because of"],
                     [(p["phase"], p["direction"], what, fmt(t.get("throttled_s")), fmt(t.get("slowed_s")),
                       fmt(t.get("paused_s")),
                       ", ".join(t.get("because") or list((t.get("by_signal_s") or {}).keys())) or "-")
                      for p, what, t in rows])]
    # Why, per row: each signal's seconds, its worst value and its limits, and the duty cycle's
    # rest (phase 3's chunks and files merged into one account).
    why = []
    for p, what, t in rows:
        parts = t.get("chunks") or t.get("files")
        line = merge_summaries(parts)["line"] if isinstance(parts, list) and parts else t.get("line")
        if line and (float(t.get("throttled_s") or 0) > 0 or "duty cycle" in line):
            why.append(f"- Phase {p['phase']} {p['direction']}, {what}: {line}.")
    # Signals the batches could not watch (a replica's lag hidden from the login).
    unwatched = list(dict.fromkeys(u for _p, _w, t in rows for u in t.get("unwatched") or []))
    return [*out, "", *why, *([""] if why else []),
            *(f"Not watched: {u}." for u in unwatched), *([""] if unwatched else [])]


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{value}{unit}"


def sample_row(s: dict) -> list[str]:
    """One monitoring sample as the Metrics table's row."""
    if "error" in s:
        return [str(s["at"]), str(s.get("phase")), str(s.get("kind")), f"sample failed: {s['error']}", *[""] * 8]
    conn = s["connections"]
    return [str(s["at"]), str(s.get("phase") or "-"), str(s.get("kind")),
            f"{conn['used']}/{conn['max']} ({conn['utilisation_pct']}%)",
            f"{s['locks']['waiting']} ({s['locks']['longest_wait_s']})",
            fmt((s.get("longest_query") or {}).get("seconds")), fmt(s.get("error_rate_pct"), "%"), fmt(s.get("p95_ms")),
            str(s["probe"]["p95_ms"]), f"{s['database_size_bytes'] / 1048576:.1f}",
            fmt((s.get("replication") or {}).get("max_lag_s")), fmt(s.get("event_lag_s"))]


def markdown(r: dict) -> str:
    c = r["context"]
    where = f" in phase {r['result_phase']}" if r["result"] == "failed" and r["result_phase"] else \
        f" before phase {r['result_phase']}" if r["result"] == "stopped" and r["result_phase"] else ""
    out = [f"# {r['playbook']} on {c.get('host')} ({c.get('environment')}): {r['result']}{where}", "",
           f"**Next:** {r['next']}.", ""]
    if r["reason"]:
        out += [f"**Reason:** {r['reason']}", ""]
    facts = [(key, str(c.get(key, ""))) for key in ("environment", "host", "database", "run_id", "operator",
                                                    "started_at")]
    facts += [("finished_at", r["finished_at"]), ("phases selected", ", ".join(c.get("phases_selected", []))),
              ("approved by", r["approved_by"] or "n/a")]
    out += [*md.table(["", ""], facts), ""]
    out += ["## Phases", ""]
    if r["phases"]:
        out += md.table(["phase", "title", "direction", "status", "started", "duration (s)", "rows", "error"],
                        [(p["phase"], r["phase_titles"].get(p["phase"], ""), p["direction"], p["status"],
                          str(p["started_at"]), str(p["duration_s"]), fmt(p.get("rows_affected")), p.get("error") or "")
                         for p in r["phases"]])
    else:
        out.append("No phase ran in this run." + (f" ({r['ledger_error']})" if r.get("ledger_error") else ""))
    out.append("")
    v = r.get("validation")
    if v:
        out += ["## Validation", "", f"Validator {'passed' if v['passed'] else 'FAILED'}"
                f"{'' if v['from_this_run'] else ' (earlier run)'}; report `{v['report']}`.", ""]
        if v.get("checks"):
            out += md.table(["check", "passed", "observed", "expected"],
                            [(str(ch["check"]), "yes" if ch["passed"] else "NO", str(ch.get("observed")),
                              str(ch.get("expected", ""))) for ch in v["checks"]])
            out.append("")
    out += throttle_section(r["phases"])
    out += ["## Alerts", ""]
    if r["alerts"]:
        out += [f"- {a['at']} phase {a.get('phase') or '-'} **{a['severity']}**"
                f"{' (abort criterion)' if a.get('abort') else ''}: {a['message']}" for a in r["alerts"]]
    else:
        out.append("None.")
    m = r["monitoring"]
    out += ["", "## Metrics", "", m["pg_stat_statements"], ""]
    if m.get("baseline"):
        b = m["baseline"]
        probe = fmt(b.get("probe", {}).get("p95_ms"), " ms")
        out += [f"Pre-migration baseline ({b.get('at')}): probe p95 {probe}.", ""]
    if m["samples"]:
        out += md.table(["at", "phase", "kind", "connections", "lock waits (longest s)", "longest query (s)",
                         "error rate", "p95 (ms)", "probe p95 (ms)", "size (MiB)", "replication lag (s)",
                         "event lag (s)"], [sample_row(s) for s in m["samples"]])
    else:
        out.append("No samples.")
    out += ["", "## Approvals", ""]
    if r["approvals"]:
        out += md.table(["stage", "role", "name", "decision", "recorded at"],
                        [(str(a.get("stage", "pre")), str(a.get("role")), str(a.get("name")),
                          str(a.get("decision", "go")), str(a.get("recorded_at", ""))) for a in r["approvals"]])
    else:
        out.append(f"Single approver: {r['approved_by']}." if r["approved_by"] else "None recorded.")
    out += ["", "## Notifications", ""]
    if r["notifications"]:
        out += md.table(["at", "event", "message", "channels"],
                        [(str(n.get("at")), str(n.get("event")), str(n.get("text", "")),
                          ", ".join(f"{k}: {v}" for k, v in sorted((n.get("channels") or {}).items())))
                         for n in r["notifications"]])
    else:
        out.append("None.")
    if r["extra"]:
        out += ["", "## More", "", "```json", json.dumps(r["extra"], indent=2, default=str), "```"]
    return "\n".join(out) + "\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            report_dir=dict(type="path", required=True),
            stem=dict(type="str", required=True),
            playbook=dict(type="str", required=True),
            outcome=dict(type="str", required=True, choices=["succeeded", "failed", "stopped", "nothing to do"]),
            result=dict(type="str", default="", choices=["", *RESULT_NEXT]),
            result_phase=dict(type="str", default=""),
            reason=dict(type="str", default=""),
            context=dict(type="dict", default={}),
            workdir=dict(type="path"),
            notify_log=dict(type="path"),
            approvals=dict(type="list", elements="dict", default=[]),
            approved_by=dict(type="str", default=""),
            baseline=dict(type="dict"),
            phase_titles=dict(type="dict", default={}),
            extra=dict(type="dict", default={}),
            read_ledger=dict(type="bool", default=True),
            announcement=dict(type="dict"),  # rendered by the action plugin
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    if "/" in p["stem"] or p["stem"].startswith("."):
        module.fail_json(msg=f"bad report name {p['stem']!r}: no directories, no leading dot")
    ledger = ledger_part(module, p["context"].get("run_id", "")) if p["read_ledger"] else \
        {"phases": [], "state": {}}
    samples = read_jsonl(os.path.join(p["workdir"], "samples.jsonl")) if p["workdir"] else []
    alerts = read_jsonl(os.path.join(p["workdir"], "alerts.jsonl")) if p["workdir"] else []
    note = next((s["pg_stat_statements"]["note"] for s in samples
                 if s.get("pg_stat_statements") and not s["pg_stat_statements"]["installed"]), None)
    installed = any((s.get("pg_stat_statements") or {}).get("installed") for s in samples)
    result = p["result"] or {"failed": "failed", "stopped": "stopped"}.get(p["outcome"], "completed")
    report = scrub(json_safe({
        "playbook": p["playbook"],
        "result": result,
        "result_phase": p["result_phase"] or None if result in ("failed", "stopped") else None,
        "next": RESULT_NEXT[result],
        "outcome": p["outcome"],
        "reason": p["reason"],
        "context": p["context"],
        "finished_at": utcnow(),
        "approved_by": p["approved_by"],
        "approvals": p["approvals"],
        "phase_titles": p["phase_titles"],
        "phases": ledger["phases"],
        "ledger_error": ledger.get("error"),
        "validation": validation_part(ledger["phases"], ledger["state"]),
        "alerts": alerts,
        "monitoring": {
            "baseline": p["baseline"],
            "pg_stat_statements": ("query latency p95 from pg_stat_statements (calls-weighted p95 of "
                                   "statements' mean execution time per interval)") if installed else
                                  (note or "no samples, so no query latency p95"),
            "samples": samples,
        },
        "notifications": read_jsonl(p["notify_log"]),
        "extra": p["extra"],
    }))
    paths = report_pair_paths(p["report_dir"], p["stem"])
    if module.check_mode:
        module.exit_json(changed=False, paths=paths, msg="check mode: no report written")
    try:
        write_report_pair(paths, report, markdown(report))
    except OSError as exc:
        module.fail_json(msg=f"cannot write the report in {p['report_dir']}: {exc.strerror or exc} "
                             "(check migration_report_dir)")
    # The report is the run's record, like a log: not a change to the database, so a rerun that
    # changes nothing still reports changed=0 (the idempotence checks rely on it).
    module.exit_json(changed=False, paths=paths, ledger_state=ledger["state"],
                     phases=ledger["phases"], alerts=alerts, validation=report["validation"])


if __name__ == "__main__":
    main()
