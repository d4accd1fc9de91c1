#!/usr/bin/python
# The post-migration review (strategy 7.1, within 7 days) and the schema documentation (4.1).
# review: the execution timeline from the ledger (every phase run, forward or back, with its
#         runs, reruns, lock waits, failures, interruptions, stops and rollbacks), the challenges
#         met (alerts, failures, reruns, the stops the run reports recorded), the performance
#         before and after (the pre-migration baseline, the sample after phase 6, the 48-hour
#         watch's trends), the strategy's agenda filled in with those, and the sections the team
#         completes. Written as Markdown and JSON.
# schema: the documentation of the tables phase 2 created and the columns it added (the
#         migration's manifest names them: schema_objects), generated
#         from the catalog (types, defaults, nullability, the COMMENT ON phase 2 put, constraints
#         with their delete rules, indexes, row-level security and policies, views); deterministic,
#         so docs/schema.md can be checked against a migrated database.
# Read-only for the database: one READ ONLY transaction.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_review
short_description: Write the post-migration review (strategy 7.1) and the schema documentation (4.1)
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - The review - the execution timeline from the ledger (every phase run, forward or back, with its
    reruns, lock waits, failures, interruptions, stops and rollbacks), the challenges met, the
    performance before and after (the pre-migration baseline, the sample after phase 6, the
    48-hour watch's trends), the strategy's agenda filled in, and the sections the team completes.
    Written as I(report_dir)/I(stem).md and I(stem).json.
  - With I(schema_doc), also the documentation of the tables phase 2 created and the columns it
    added, generated from the catalog; deterministic, so it can be checked against a migrated
    database.
  - Reads the ledger (history, created objects, approvals, the watch's samples), the run reports
    under I(report_dir) and the catalog, in one read-only transaction; changes nothing in the
    database. Never reports a change; in check mode nothing is written.
options:
  report_dir:
    description: Where the run reports are, and the review goes.
    type: path
    required: true
  stem:
    description: The review files' name without extension.
    type: str
    required: true
  host:
    description: The inventory host (its run reports are read).
    type: str
    required: true
  environment:
    description: The environment, shown in the review.
    type: str
    default: local
  phase_titles:
    description: Phase number to title.
    type: dict
    required: true
  post_roles:
    description: The roles of the post-migration sign-off, listed in the review.
    type: list
    elements: str
    default: []
  schema_doc:
    type: path
    description: Also write the schema documentation alone to this file.
  schema_objects:
    type: dict
    default: {}
    description:
      - What the schema documentation shows, from the migration's manifest - C(tables) (the tables
        it creates, in order; C(tables.new)), C(extended) (C(table) and the C(columns) it adds;
        C(extended)) and C(views) (C(access.views)). Empty - nothing.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Write the post-migration review and the schema documentation
  agency.pgmigrate.pgmigrate_review:
    report_dir: reports
    stem: review-db1
    host: db1
    environment: production
    phase_titles: {"1": Preparation, "2": Schema, "3": Data migration}
    post_roles: [dba, product_owner]
    schema_doc: docs/schema.md
    db_host: db.example.internal
    db_name: app
    db_user: migrator
"""

RETURN = r"""
paths:
  description: The files (C(json), C(md), and C(schema) with I(schema_doc)), written unless in check mode.
  returned: success
  type: dict
markdown:
  description: The review as Markdown.
  returned: success
  type: str
challenges:
  description: The challenges met, one line each.
  returned: success
  type: list
  elements: str
timeline:
  description: Every ledger record, in order.
  returned: success
  type: list
  elements: dict
runs:
  description: The runs, from the run reports.
  returned: success
  type: list
  elements: dict
performance:
  description: The figures before the migration, after phase 6, and the watch's trends.
  returned: success
  type: dict
summary:
  description: The review in one line.
  returned: success
  type: str
"""

import datetime
import glob
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
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    phase_lock_waits,
    report_pair_paths,
    utcnow,
    write_report,
    write_report_pair,
)

DELETE_RULES = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


# --- reading --------------------------------------------------------------------------------

def _exists(cur, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])


def read_ledger(cur) -> dict:
    if not _exists(cur, f"{LEDGER_SCHEMA}.history"):
        raise MigrationError("this database has no migration ledger: nothing to review (run playbooks/migrate.yml "
                             "first). Nothing was changed.")
    out = {"history": fetch_dicts(cur, f"""
        SELECT id, run_id::text AS run_id, phase, direction, status, started_at, finished_at,
               round(extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at)::numeric, 2)
                 AS duration_s, operator, approved_by, environment, rows_affected, error, details
          FROM {LEDGER_SCHEMA}.history ORDER BY id""")}
    out["approvals"] = fetch_dicts(cur, f"""
        SELECT stage, role, name, decision, note, recorded_at FROM {LEDGER_SCHEMA}.approvals
         ORDER BY recorded_at, id""") if _exists(cur, f"{LEDGER_SCHEMA}.approvals") else []
    out["watch"] = fetch_dicts(cur, f"""
        SELECT kind, taken_at, metrics, alerts, escalations FROM {LEDGER_SCHEMA}.watch_samples
         ORDER BY id""") if _exists(cur, f"{LEDGER_SCHEMA}.watch_samples") else []
    return out


def read_schema(cur, objects: dict) -> dict:
    """What the migration added, from the catalog: its new tables, the columns it added to the
    extended table, its views (objects: the module's schema_objects)."""
    extended = objects.get("extended") or {}
    extended_table = extended.get("table")
    named = list(objects.get("tables") or []) + ([extended_table] if extended_table else [])
    tables = fetch_dicts(cur, """
        SELECT c.relname AS table, obj_description(c.oid, 'pg_class') AS comment, c.relrowsecurity AS rls
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(%s)
         ORDER BY array_position(%s, c.relname::text)""", (named, named))
    for t in tables:
        only = list(extended.get("columns") or []) if t["table"] == extended_table else None
        columns = fetch_dicts(cur, """
            SELECT a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
                   pg_get_expr(d.adbin, d.adrelid) AS default, col_description(a.attrelid, a.attnum) AS comment
              FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
                              (t["table"],))
        t["columns"] = [c for c in columns if only is None or c["column"] in only]
        t["constraints"] = fetch_dicts(cur, """
            SELECT conname AS name, contype AS type, pg_get_constraintdef(oid) AS definition, confdeltype
              FROM pg_constraint WHERE conrelid = %s::regclass ORDER BY contype, conname""", (t["table"],))
        if only is not None:
            t["constraints"] = [c for c in t["constraints"] if any(col in c["definition"] for col in only)]
        t["indexes"] = fetch_dicts(cur, """
            SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = %s::regclass AND NOT i.indisprimary ORDER BY c.relname""", (t["table"],))
        if only is not None:
            t["indexes"] = [i for i in t["indexes"] if any(col in i["definition"] for col in only)]
        t["policies"] = fetch_dicts(cur, """
            SELECT policyname AS name, cmd, roles::text AS roles, qual, with_check FROM pg_policies
             WHERE schemaname = current_schema() AND tablename = %s ORDER BY policyname""", (t["table"],))
    views = fetch_dicts(cur, """
        SELECT c.relname AS view, obj_description(c.oid, 'pg_class') AS comment, c.reloptions AS options
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'v' AND c.relname = ANY(%s) ORDER BY c.relname""",
                        (list(objects.get("views") or []),))
    return json_safe({"tables": tables, "views": views})


def run_reports(report_dir: str, host: str) -> dict:
    """The outcome of every migrate and rollback run of this host, by run id (stops and their reasons)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(report_dir, f"*-*-{host}.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            continue
        ctx = report.get("context") or {}
        if isinstance(report, dict) and report.get("playbook") in ("migrate", "rollback") and ctx.get("run_id"):
            found[ctx["run_id"]] = {"playbook": report["playbook"], "outcome": report.get("outcome"),
                                    "reason": report.get("reason"), "report": path,
                                    "notifications": len(report.get("notifications") or [])}
    return found


# --- judging --------------------------------------------------------------------------------

def timeline(history: list[dict], reports: dict) -> tuple[list[dict], list[dict]]:
    rows, runs = [], {}
    seen_apply: dict[str, int] = {}
    for r in history:
        details = r.get("details") or {}
        waits = phase_lock_waits(details)
        kind = r["direction"]
        if kind == "apply":
            seen_apply[r["phase"]] = seen_apply.get(r["phase"], 0) + 1
            attempt = seen_apply[r["phase"]]
        else:
            attempt = None
        alerts = (details.get("monitoring") or {}).get("alerts") or []
        rows.append({"id": r["id"], "run_id": r["run_id"], "phase": r["phase"], "direction": kind,
                     "status": r["status"], "started_at": r["started_at"], "finished_at": r["finished_at"],
                     "duration_s": float(r["duration_s"]), "operator": r["operator"], "approved_by": r["approved_by"],
                     "rows": r["rows_affected"], "error": r["error"], "attempt": attempt, "lock": waits,
                     "alerts": alerts, "summary": details.get("summary")})
        run = runs.setdefault(r["run_id"], {"run_id": r["run_id"], "started_at": r["started_at"], "phases": [],
                                            "direction": kind, "operator": r["operator"]})
        run["phases"].append(f"{r['phase']}{'' if r['status'] == 'succeeded' else ' ' + r['status']}")
        run["finished_at"] = r["finished_at"]
    for run in runs.values():
        report = reports.get(run["run_id"]) or {}
        run["outcome"] = report.get("outcome")
        run["reason"] = report.get("reason")
        run["report"] = report.get("report")
    return rows, list(runs.values())


def challenges(rows: list[dict], runs: list[dict], watch: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["status"] != "succeeded":
            out.append(f"phase {r['phase']} {r['direction']} {r['status']} at {r['started_at']}"
                       + (f": {r['error']}" if r["error"] else ""))
        if r["direction"] == "apply" and r["attempt"] and r["attempt"] > 1:
            out.append(f"phase {r['phase']} was run again (attempt {r['attempt']}, {r['started_at']}, "
                       f"{r['status']})")
        if r["lock"]["lock_retries"]:
            out.append(f"phase {r['phase']} waited for locks: {r['lock']['lock_retries']} lock-timeout retries")
        for a in r["alerts"]:
            out.append(f"alert during phase {r['phase']}: {a.get('message')}")
        if r["direction"] == "rollback":
            out.append(f"phase {r['phase']} rolled back at {r['started_at']} ({r['status']})"
                       + (f": {r['summary']}" if r["summary"] else ""))
    for run in runs:
        if run.get("outcome") in ("stopped", "failed"):
            out.append(f"run {run['run_id'][:8]} {run['outcome']}: {run.get('reason')}")
    for s in watch:
        for a in s.get("alerts") or []:
            out.append(f"48-hour watch alert at {s['taken_at']}: {a.get('message')}"
                       + (" (escalated)" if a.get("escalate") else ""))
    return out


def performance(history: list[dict], watch: list[dict]) -> dict:
    applies = {r["phase"]: r for r in history if r["direction"] == "apply" and r["status"] == "succeeded"}
    before = (((applies.get("1") or {}).get("details") or {}).get("monitoring") or {})
    baseline = before.get("baseline") or before.get("before") or {}
    after = (((applies.get("6") or {}).get("details") or {}).get("monitoring") or {}).get("after") or {}
    samples = [s for s in watch if s["kind"] == "sample"]

    def figures(sample: dict) -> dict:
        if not sample:
            return {}
        return {"probe_p95_ms": (sample.get("probe") or {}).get("p95_ms"), "p95_ms": sample.get("p95_ms"),
                # Only a judged rate (over enough transactions) says anything (pgmigrate_monitor).
                "error_rate_pct": sample.get("error_rate_pct") if sample.get("error_rate_judged") else None,
                "database_size_mib": round(sample["database_size_bytes"] / 1048576, 2)
                if sample.get("database_size_bytes") else None,
                "connections": (sample.get("connections") or {}).get("used"), "at": sample.get("at")}

    trends = {}
    for s in samples:
        for k, v in (s.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                trends.setdefault(k, []).append(float(v))
    return {"before": figures(baseline), "after_phase6": figures(after),
            "watch": {k: {"first": v[0], "latest": v[-1], "min": min(v), "max": max(v), "samples": len(v)}
                      for k, v in trends.items()},
            "watch_samples": len(samples), "watch_over": any(s["kind"] == "over" for s in watch)}


# --- writing --------------------------------------------------------------------------------

def schema_markdown(schema: dict, level: int = 1, extended_table: str | None = None) -> str:
    h = "#" * level
    out = [f"{h} Schema documentation: what the migration added", "",
           "Generated from the catalog of a migrated database (the COMMENT ON of phase 2's "
           "`migrations/ht036/phase2/deploy/040_comments.sql`, types, defaults, constraints, indexes, policies) by "
           "`playbooks/review.yml`; do not edit by hand.", ""]
    for t in schema["tables"]:
        added = t["table"] == extended_table
        out += [f"{h}# `{t['table']}`{' (the columns phase 2 added)' if added else ''}", ""]
        if t["comment"] and not added:
            out += [t["comment"], ""]
        if t["rls"]:
            out += ["Row-level security is enabled.", ""]
        out += md.table(["column", "type", "null", "default", "description"],
                        [(md.code(c["column"]), c["type"], "no" if c["not_null"] else "yes", c["default"], c["comment"])
                         for c in t["columns"]])
        if t["constraints"]:
            out += ["", "Constraints:", ""]
            for c in t["constraints"]:
                rule = f" (on delete: {DELETE_RULES.get(c['confdeltype'], c['confdeltype'])})" \
                    if c["type"] == "f" else ""
                out.append(f"- `{c['name']}`: `{c['definition']}`{rule}")
        if t["indexes"]:
            out += ["", "Indexes:", ""] + [f"- `{i['definition']}`" for i in t["indexes"]]
        if t["policies"]:
            out += ["", "Policies:", ""] + [f"- `{p['name']}` ({p['cmd']}, {p['roles']}): `{p['qual']}`"
                                            for p in t["policies"]]
        out.append("")
    if schema["views"]:
        out += [f"{h}# Views", ""]
        out += [f"- `{v['view']}`{' (' + ', '.join(v['options']) + ')' if v['options'] else ''}"
                + (f": {v['comment']}" if v["comment"] else "") for v in schema["views"]]
        out.append("")
    return "\n".join(out)


def human_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(r: dict, extended_table: str | None = None) -> str:
    out = [f"# Post-migration review: {r['host']} ({r['environment']})", "",
           f"Generated {r['at']} from the ledger, the run reports and the 48-hour watch (strategy 7.1: within 7 "
           f"days of completion). Completed: {r['completed_at'] or 'not yet (phase 6 is not applied)'}"
           + (f"; the review is {r['days_since']:.1f} day(s) after it" if r["days_since"] is not None else "")
           + ".", "", "## Agenda (strategy 7.1)", "",
           f"1. Review the migration execution timeline: {len(r['timeline'])} ledger record(s) in "
           f"{len(r['runs'])} run(s), below.",
           f"2. Challenges encountered and solutions: {len(r['challenges'])} found, below; the solutions are "
           "for the team to add.",
           "3. Performance impact: before and after, and the watch's trends, below.",
           "4. Team feedback: to complete.", "5. Lessons learned: to complete.",
           "6. Process improvements: to complete.", "", "## 1. Execution timeline", ""]
    out += md.table(["#", "run", "phase", "direction", "status", "started", "duration", "rows", "lock retries",
                     "waiting max", "by"],
                    [(t["id"], t["run_id"][:8],
                      f"{t['phase']} {r['titles'].get(t['phase'], '')}"
                      + (f" (attempt {t['attempt']})" if t["attempt"] and t["attempt"] > 1 else ""),
                      t["direction"], t["status"], str(t["started_at"]), human_s(t["duration_s"]), t["rows"],
                      t["lock"]["lock_retries"], t["lock"]["sessions_waiting_max"], t["operator"])
                     for t in r["timeline"]], "rllllllrrrl")
    out += ["", "Runs:", ""]
    for run in r["runs"]:
        outcome = f", {run['outcome']}" if run.get("outcome") else ""
        reason = f" - {run['reason']}" if run.get("reason") else ""
        out.append(f"- `{run['run_id'][:8]}` {run['direction']} by {run['operator']}, {run['started_at']} to "
                   f"{run['finished_at']}: phases {', '.join(run['phases'])}{outcome}{reason}")
    out += ["", "## 2. Challenges encountered", ""]
    out += [f"- {c}" for c in r["challenges"]] or ["- none recorded: no failure, rerun, lock retry, alert, stop "
                                                   "or rollback in the ledger, the run reports or the watch"]
    out += ["", "Solutions and what the operators did: _to complete by the team_.", "", "## 3. Performance impact", ""]
    p = r["performance"]
    watch = p["watch"]
    out += md.table(["figure", "before (baseline, before phase 1)", "after phase 6", "48-hour watch (latest)"],
                    [(label, p["before"].get(key), p["after_phase6"].get(key), (watch.get(key) or {}).get("latest"))
                     for key, label in (("probe_p95_ms", "probe query p95 (ms)"),
                                        ("p95_ms", "query p95, pg_stat_statements (ms)"),
                                        ("error_rate_pct", "error rate (%)"),
                                        ("database_size_mib", "database size (MiB)"))], "lrrr")
    out += ["", f"The 48-hour watch: {p['watch_samples']} sample(s)"
            + (", over" if p["watch_over"] else "") + "." + (" Trends:" if watch else ""), ""]
    if watch:
        out += md.table(["metric", "first", "latest", "min", "max"],
                        [(k, f"{v['first']:g}", f"{v['latest']:g}", f"{v['min']:g}", f"{v['max']:g}")
                         for k, v in watch.items()], "lrrrr")
        out += ["", f"Plots: `watch-{r['host']}.md` beside this review.", ""]
    latest_post = {a["role"].lower(): a for a in r["approvals"] if a["stage"] == "post"}
    signed = [(role, latest_post.get(role.lower())) for role in r["post_roles"]]
    out += ["## Sign-offs (strategy 8)", "",
            *md.table(["role", "decision", "by", "at"],
                      [(role, a["decision"] if a else "missing", (a or {}).get("name"), (a or {}).get("recorded_at"))
                       for role, a in signed])]
    out += ["", "## 4. Team feedback", "", "_To complete by the team._", "", "## 5. Lessons learned", "",
            "_To complete by the team._", "", "## 6. Process improvements", "", "_To complete by the team._", ""]
    out.append(schema_markdown(r["schema"], level=2, extended_table=extended_table))
    return "\n".join(out)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            report_dir=dict(type="path", required=True),
            stem=dict(type="str", required=True),
            host=dict(type="str", required=True),
            environment=dict(type="str", default="local"),
            phase_titles=dict(type="dict", required=True),
            post_roles=dict(type="list", elements="str", default=[]),
            schema_doc=dict(type="path"),
            schema_objects=dict(type="dict", default={}),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        conn = connect(p, "pgmigrate-review")
        try:
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                ledger = read_ledger(cur)
                schema = read_schema(cur, p["schema_objects"])
                cur.execute("SELECT clock_timestamp()")
                now = cur.fetchone()[0]
            conn.rollback()
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    ledger = json_safe(ledger)
    rows, runs = timeline(ledger["history"], run_reports(p["report_dir"], p["host"]))
    done = [t for t in rows if t["phase"] == "6" and t["direction"] == "apply" and t["status"] == "succeeded"]
    completed = done[-1]["finished_at"] if done else None
    days = ((now - datetime.datetime.fromisoformat(str(completed))).total_seconds() / 86400) if completed else None
    review = json_safe({
        "kind": "review", "at": utcnow(), "host": p["host"], "environment": p["environment"],
        "completed_at": completed, "days_since": days, "titles": p["phase_titles"], "timeline": rows, "runs": runs,
        "challenges": challenges(rows, runs, ledger["watch"]),
        "performance": performance(ledger["history"], ledger["watch"]),
        "approvals": ledger["approvals"], "post_roles": p["post_roles"], "schema": schema})
    extended_table = (p["schema_objects"].get("extended") or {}).get("table")
    text = markdown(review, extended_table)
    paths = report_pair_paths(p["report_dir"], p["stem"])
    if not module.check_mode:
        try:
            write_report_pair(paths, review, text)
            if p["schema_doc"]:
                write_report(p["schema_doc"], schema_markdown(schema, extended_table=extended_table))
                paths["schema"] = p["schema_doc"]
        except OSError as exc:
            module.fail_json(msg=f"cannot write the review: {exc.strerror or exc} (check migration_report_dir "
                                 "and review_schema_doc)")
    module.exit_json(changed=False, paths=paths, markdown=text, challenges=review["challenges"],
                     timeline=rows, runs=runs, performance=review["performance"],
                     summary=f"post-migration review: {len(rows)} ledger record(s) in {len(runs)} run(s), "
                             f"{len(review['challenges'])} challenge(s); {paths['md']}")


if __name__ == "__main__":
    main()
