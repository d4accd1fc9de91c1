#!/usr/bin/python
# The rehearsal's own measurements and its verdict (playbooks/rehearse.yml).
#   fingerprint: the database's catalog (schemas, relations, columns, indexes, constraints,
#                views, policies, grants, functions, triggers, sequences, extensions, settings,
#                the cluster's roles) and its data (per table: row count and an order-independent
#                hash of every row), saved as JSON; compared with an earlier fingerprint when
#                asked (the rollback's fidelity). Read-only.
#   report:      this run's ledger records (every phase applied, every phase rolled back), the
#                lock waits and alerts they recorded, the validator's results, the fidelity and the
#                clone, judged: go only if every phase succeeded, validation passed, no monitoring
#                alert fired, the full rollback succeeded and its fidelity holds; otherwise no-go
#                with the first reason. Written as JSON (machines) and Markdown (people).
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_rehearsal
short_description: Fingerprints for the rollback's fidelity, and the rehearsal's report and verdict
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - C(fingerprint) reads the database's catalog (schemas, relations, columns, indexes, constraints,
    views, policies, grants, functions, triggers, sequences, extensions, settings, the cluster's
    roles) and its data (per table - row count and an order-independent hash of every row), saves
    it as JSON at I(path), and compares it with the earlier fingerprint I(compare_to) when given
    (the rollback's fidelity). Read-only for the database.
  - C(report) judges the rehearsal (playbooks/rehearse.yml) - this run's ledger records (every phase
    applied, every phase rolled back), the lock waits and alerts they recorded, the validator's
    results, the fidelity and the clone. Go only if every phase succeeded, validation passed, no
    monitoring alert fired, the full rollback succeeded and its fidelity holds; otherwise no-go
    with the first reason. Written as I(report_dir)/I(stem).json and I(stem).md.
  - Never reports a change.
options:
  action:
    description: Take a fingerprint, or write the rehearsal's report.
    type: str
    required: true
    choices: [fingerprint, report]
  path:
    type: path
    description: C(fingerprint) - where to save it.
  compare_to:
    type: path
    description: C(fingerprint) - an earlier fingerprint to compare with.
  ignore:
    type: list
    elements: str
    description: >-
      C(fingerprint) - key prefixes left out of the comparison; unset - the ledger's schema and
      phase 1's backup tables.
  report_dir:
    description: C(report) - where the report goes.
    type: path
  stem:
    description: C(report) - the report's file name without extension.
    type: str
  run_id:
    description: C(report) - the rehearsal run, whose ledger records are judged.
    type: str
    default: ""
  context:
    description: C(report) - the run's context (source, staging, started_at, already_applied).
    type: dict
    default: {}
  clone:
    description: C(report) - the clone's result (M(agency.pgmigrate.pgmigrate_clone)).
    type: dict
    default: {}
  failure:
    description: C(report) - what failed the run (C(phase), C(msg)), if anything.
    type: dict
    default: {}
  stop:
    description: C(report) - the monitoring's stop decision, if it stopped the run.
    type: dict
    default: {}
  rollback:
    description: C(report) - the full rollback's result.
    type: dict
    default: {}
  fidelity:
    description: C(report) - the fingerprint comparison after the rollback (C(holds), C(differences)).
    type: dict
    default: {}
  alerts_file:
    description: C(report) - the run's monitoring alerts (alerts.jsonl).
    type: path
  phase_titles:
    description: C(report) - phase number to title.
    type: dict
    default: {}
  phases:
    description: C(report) - the phases the rehearsal must apply.
    type: list
    elements: str
    default: ["1", "2", "3", "4", "5", "6"]
  run_report:
    description: C(report) - the run's own report, linked from the rehearsal's.
    type: str
    default: ""
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Fingerprint the clone before the migration
  agency.pgmigrate.pgmigrate_rehearsal:
    action: fingerprint
    path: reports/rehearsal/before.json
    db_host: staging-db.example.internal
    db_name: app
    db_user: migrator

- name: After the full rollback, compare with it
  agency.pgmigrate.pgmigrate_rehearsal:
    action: fingerprint
    path: reports/rehearsal/after-rollback.json
    compare_to: reports/rehearsal/before.json
    db_host: staging-db.example.internal
    db_name: app
    db_user: migrator
  register: fidelity
"""

RETURN = r"""
path:
  description: C(fingerprint) - the fingerprint saved.
  returned: action is fingerprint
  type: str
tables:
  description: C(fingerprint) - tables fingerprinted.
  returned: action is fingerprint
  type: int
objects:
  description: C(fingerprint) - catalog objects and tables fingerprinted.
  returned: action is fingerprint
  type: int
holds:
  description: C(fingerprint) - whether nothing differs from I(compare_to).
  returned: action is fingerprint and I(compare_to) is given
  type: bool
differences:
  description: C(fingerprint) - the first 50 differences, one line each.
  returned: action is fingerprint and I(compare_to) is given
  type: list
  elements: str
difference_count:
  description: C(fingerprint) - how many differences.
  returned: action is fingerprint and I(compare_to) is given
  type: int
verdict:
  description: C(report) - C(go) or C(no-go).
  returned: action is report
  type: str
reason:
  description: C(report) - the first reason for a no-go.
  returned: action is report
  type: str
reasons:
  description: C(report) - every reason for a no-go.
  returned: action is report
  type: list
  elements: str
paths:
  description: C(report) - the report files (C(json), C(md)).
  returned: action is report
  type: dict
phases:
  description: C(report) - the phases judged, with status and duration.
  returned: action is report
  type: list
  elements: dict
validation:
  description: C(report) - the validator's results.
  returned: action is report
  type: dict
alerts:
  description: C(report) - the monitoring alerts of the run.
  returned: action is report
  type: list
  elements: dict
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
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    phase_lock_waits,
    report_pair_paths,
    utcnow,
    write_report_pair,
)

SYSTEM = "nspname !~ '^pg_' AND nspname <> 'information_schema'"
# What the full rollback keeps on purpose: the ledger (the record of the rehearsal itself) and
# phase 1's backup tables (the strategy keeps them 7 days; playbooks/cleanup.yml drops them), in
# whichever schema the migrated tables are: "*." stands for any schema.
DEFAULT_IGNORE = ["migration_ledger.", "*.migration_backup_"]

CATALOG: dict[str, str] = {
    "schemas": f"SELECT nspname, pg_get_userbyid(nspowner) || ' ' || coalesce(nspacl::text, '') "
               f"FROM pg_namespace WHERE {SYSTEM}",
    "relations": f"""
        SELECT n.nspname || '.' || c.relname,
               json_build_object('kind', c.relkind, 'owner', pg_get_userbyid(c.relowner),
                                 'rowsecurity', c.relrowsecurity, 'forcerowsecurity', c.relforcerowsecurity,
                                 'options', c.reloptions, 'acl', c.relacl::text)::text
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               json_build_object('type', format_type(a.atttypid, a.atttypmod), 'notnull', a.attnotnull,
                                 'default', pg_get_expr(d.adbin, d.adrelid), 'position', a.attnum)::text
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE {SYSTEM} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": f"""
        SELECT n.nspname || '.' || c.relname,
               json_build_object('definition', pg_get_indexdef(i.indexrelid), 'valid', i.indisvalid)::text
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM}""",
    "constraints": f"""
        SELECT n.nspname || '.' || coalesce(r.relname, '-') || '.' || con.conname,
               json_build_object('definition', pg_get_constraintdef(con.oid), 'validated', con.convalidated)::text
          FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
          LEFT JOIN pg_class r ON r.oid = con.conrelid
         WHERE {SYSTEM}""",
    "views": f"""
        SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {SYSTEM} AND c.relkind IN ('v', 'm')""",
    "policies": """
        SELECT schemaname || '.' || tablename || '.' || policyname,
               json_build_object('permissive', permissive, 'roles', roles, 'cmd', cmd, 'qual', qual,
                                 'with_check', with_check)::text
          FROM pg_policies""",
    "functions": f"""
        SELECT n.nspname || '.' || p.oid::regprocedure::text, pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '')
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {SYSTEM} AND p.prokind IN ('f', 'p', 'w')""",
    "triggers": f"""
        SELECT n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM} AND NOT t.tgisinternal""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "sequences": """
        SELECT schemaname || '.' || sequencename, coalesce(last_value::text, 'unused')
          FROM pg_sequences WHERE schemaname !~ '^pg_' AND schemaname <> 'information_schema'""",
    "roles": """
        SELECT rolname, json_build_object('super', rolsuper, 'login', rolcanlogin, 'bypassrls', rolbypassrls,
                                          'inherit', rolinherit)::text
          FROM pg_roles WHERE rolname !~ '^pg_'""",
    "database_settings": """
        SELECT coalesce(r.rolname, '*'), array_to_string(s.setconfig, ',')
          FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
          LEFT JOIN pg_roles r ON r.oid = s.setrole
         WHERE d.datname = current_database()""",
}


# --- fingerprint ----------------------------------------------------------------------------

def fingerprint(conn) -> dict:
    """Catalog and data of the database, in one REPEATABLE READ, READ ONLY snapshot."""
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    out: dict = {}
    with conn.cursor() as cur:
        for name, sql in CATALOG.items():
            cur.execute(sql)
            out[name] = {str(k): v for k, v in cur.fetchall()}
        cur.execute(f"""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE {SYSTEM} AND c.relkind = 'r' ORDER BY 1, 2""")
        data = {}
        for schema, table in cur.fetchall():
            ident = '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'
            # Order-independent: the sum of two 64-bit hashes of every row's text, with the count.
            cur.execute(f"""SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
                                   || '/' || coalesce(sum(hashtextextended(t::text, 1)::numeric), 0)::text
                              FROM {ident} t""")
            count, digest = cur.fetchone()
            data[f"{schema}.{table}"] = f"{count} rows, {digest}"
        out["data"] = data
    conn.rollback()
    return out


def ignored(key: str, prefixes: list[str]) -> bool:
    return any(key.partition(".")[2].startswith(p[2:]) if p.startswith("*.")
               else key.startswith(p) or key == p.rstrip(".") for p in prefixes)


def differences(before: dict, after: dict, prefixes: list[str]) -> list[str]:
    lines = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section, {}), after.get(section, {})
        for key in sorted(set(old) | set(new)):
            if ignored(key, prefixes) or old.get(key) == new.get(key):
                continue
            if key not in new:
                lines.append(f"{section} {key}: gone (was {old[key]})")
            elif key not in old:
                lines.append(f"{section} {key}: new ({new[key]})")
            else:
                lines.append(f"{section} {key}: {old[key]} -> {new[key]}")
    return lines


def do_fingerprint(module: AnsibleModule) -> None:
    p = module.params
    prefixes = DEFAULT_IGNORE if p["ignore"] is None else p["ignore"]
    try:
        conn = connect(p, "pgmigrate-rehearsal-fingerprint")
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    try:
        current = fingerprint(conn)
    finally:
        conn.close()
    os.makedirs(os.path.dirname(p["path"]), mode=0o750, exist_ok=True)
    with open(p["path"], "w", encoding="utf-8") as handle:
        json.dump(current, handle, indent=1, sort_keys=True)
    result = {"path": p["path"], "tables": len(current["data"]), "objects": sum(len(v) for v in current.values())}
    if p["compare_to"]:
        with open(p["compare_to"], encoding="utf-8") as handle:
            before = json.load(handle)
        lines = differences(before, current, prefixes)
        result.update(holds=not lines, differences=lines[:50], difference_count=len(lines), ignored=prefixes,
                      compared_to=p["compare_to"])
    module.exit_json(changed=False, **result)


# --- report ---------------------------------------------------------------------------------

def ledger_records(module: AnsibleModule, run_id: str) -> tuple[list[dict], str | None]:
    if not run_id:
        return [], "no run id: the migration did not start"
    try:
        conn = connect(module.params, "pgmigrate-rehearsal-report")
    except MigrationError as exc:
        return [], f"ledger unreadable: {exc}"
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
            if not cur.fetchone()[0]:
                return [], "no ledger: the migration's preflight stopped before creating it"
            rows = fetch_dicts(cur, f"""
                SELECT phase, direction, status, started_at, finished_at,
                       round(extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at)::numeric, 2)
                         AS duration_s, rows_affected, error, details
                  FROM {LEDGER_SCHEMA}.history WHERE run_id = %s ORDER BY id""", (run_id,))
        return json_safe(rows), None
    finally:
        conn.close()


def read_alerts(path: str | None, records: list[dict]) -> list[dict]:
    alerts, seen = [], set()
    for record in records:
        for alert in ((record.get("details") or {}).get("monitoring") or {}).get("alerts") or []:
            alerts.append(alert)
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    alerts.append(json.loads(line))
                except ValueError:
                    continue
    unique = []
    for alert in alerts:
        key = (str(alert.get("phase")), alert.get("metric"), alert.get("message"))
        if key not in seen:
            seen.add(key)
            unique.append(alert)
    return unique


def validation(records: list[dict]) -> dict | None:
    mine = [r for r in records if r["phase"] == "6" and r["direction"] == "apply"]
    if not mine:
        return None
    details = mine[-1].get("details") or {}
    result = {"passed": bool(details.get("passed")) and mine[-1]["status"] == "succeeded",
              "failed": details.get("failed") or ([] if mine[-1]["status"] == "succeeded" else
                                                  [mine[-1].get("error") or "phase 6 failed"]),
              "report": details.get("report"), "checks": None}
    try:
        with open(details.get("report") or "", encoding="utf-8") as handle:
            result["checks"] = json.load(handle).get("checks")
    except (OSError, ValueError):
        pass
    return result


def judge(p: dict, applies: list[dict], rollbacks: list[dict], valid: dict | None, alerts: list[dict],
          already: list[str]) -> list[str]:
    """Every no-go reason, in the order of the rehearsal's steps; none means go."""
    reasons = []
    titles = p["phase_titles"]
    if p["clone"].get("failed"):
        reasons.append(f"the clone failed: {p['clone'].get('msg', 'unknown error')}")
        return reasons
    failure = p["failure"] or {}
    if failure.get("phase") == "preflight":
        reasons.append(f"the migration's preflight refused the clone: {failure.get('msg')}")
    for record in applies:
        if record["status"] != "succeeded":
            if record["phase"] == "6":
                continue  # named below, as the validation
            reasons.append(f"phase {record['phase']} ({titles.get(record['phase'], '')}) {record['status']}: "
                           f"{record.get('error') or 'no error recorded'}")
    if p["stop"]:
        reasons.append(f"the monitoring stopped the run {p['stop'].get('reason', '')}".strip())
    elif failure and failure.get("phase") != "preflight" and not any(r["status"] != "succeeded" for r in applies):
        reasons.append(f"the run stopped: {failure.get('msg')}")
    if already:
        reasons.append(f"phase(s) {', '.join(already)} were already applied in the source (its ledger): the "
                       "rehearsal could not test them")
    succeeded = {r["phase"] for r in applies if r["status"] == "succeeded"}
    if valid is not None and not valid["passed"]:
        reasons.append(f"validation failed: {'; '.join(map(str, valid['failed'])) or 'see the validation report'}")
    elif valid is None and not reasons:
        reasons.append("the validator did not run")
    missing = [ph for ph in p["phases"] if ph not in succeeded and ph not in already]
    if missing and not reasons:
        reasons.append(f"phase(s) {', '.join(missing)} did not run")
    if alerts:
        reasons.append(f"{len(alerts)} monitoring alert(s) fired: "
                       + "; ".join(f"phase {a.get('phase') or '-'}: {a.get('message')}" for a in alerts[:5]))
    rollback = p["rollback"] or {}
    if rollback.get("failed"):
        reasons.append(f"the full rollback failed: {rollback.get('msg', 'unknown error')}")
    elif [r for r in rollbacks if r["status"] != "succeeded"]:
        bad = [r for r in rollbacks if r["status"] != "succeeded"][0]
        reasons.append(f"the rollback of phase {bad['phase']} {bad['status']}: {bad.get('error')}")
    fidelity = p["fidelity"] or {}
    if not fidelity:
        reasons.append("the rollback's fidelity was not checked")
    elif not fidelity.get("holds"):
        first = (fidelity.get("differences") or ["?"])[0]
        reasons.append(f"rollback fidelity does not hold: {fidelity.get('difference_count')} difference(s) from "
                       f"the clone's pre-migration state, first: {first}")
    return reasons


def markdown(r: dict) -> str:
    c = r["context"]
    verdict = "GO" if r["verdict"] == "go" else "NO-GO"
    out = [f"# Rehearsal on {c.get('host')}: {verdict}", ""]
    out += [f"**Verdict: {r['verdict']}**" + (f" - {r['reason']}" if r["reason"] else
                                              " - every phase succeeded, validation passed, no monitoring "
                                              "alert fired, the full rollback restored the clone exactly."), ""]
    out += [*md.table(["", ""], [*((label, c.get(key)) for label, key in (
        ("source (read only)", "source"), ("staging", "staging"), ("environment", "environment"), ("run id", "run_id"),
        ("operator", "operator"), ("started", "started_at"))), ("finished", r["finished_at"])]), ""]
    if r["run_report"]:
        out += [f"Run report (metrics, notifications): `{r['run_report']}`.", ""]
    clone = r["clone"]
    out += ["## Clone", ""]
    if clone.get("failed"):
        out.append(f"Failed: {md.cell(clone.get('msg'))}")
    elif clone:
        timings = ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in (clone.get("timings") or {}).items())
        out.append(f"{clone.get('rows')} rows in {clone.get('tables')} tables, method {clone.get('method')} with "
                   f"{clone.get('jobs')} job(s): {timings}. Row counts "
                   f"{'match the source snapshot' if clone.get('clone_row_counts') else 'not compared'}.")
        if clone.get("masked"):
            out.append("")
            out.append("Personal data masked: " + ", ".join(f"{t} ({n} rows)" for t, n in clone["masked"].items())
                       + ".")
    out += ["", "## Phases", ""]
    if r["phases"]:
        out += md.table(["phase", "title", "status", "duration (s)", "rows", "lock retries", "sessions waiting (max)",
                         "longest lock wait (s)", "error"],
                        [(ph["phase"], ph["title"], ph["status"], str(ph["duration_s"]), ph["rows"],
                          ph["lock_waits"]["lock_retries"], ph["lock_waits"]["sessions_waiting_max"],
                          ph["lock_waits"]["longest_wait_s"], ph["error"]) for ph in r["phases"]])
    else:
        out.append(f"No phase ran{(' (' + r['ledger_note'] + ')') if r['ledger_note'] else ''}.")
    out += ["", "## Validation", ""]
    v = r["validation"]
    if v is None:
        out.append("The validator did not run.")
    else:
        out.append(f"{'Passed' if v['passed'] else 'FAILED'}; report `{v['report']}`.")
        if v.get("checks"):
            out += ["", *md.table(["check", "passed", "observed", "expected"],
                                  [(ch.get("check"), "yes" if ch.get("passed") else "NO", ch.get("observed"),
                                    ch.get("expected")) for ch in v["checks"]])]
    out += ["", "## Monitoring alerts", ""]
    out += [f"- phase {a.get('phase') or '-'} {a.get('severity', '')}: {md.cell(a.get('message'))}"
            for a in r["alerts"]] or ["None."]
    out += ["", "## Rollback", ""]
    rb = r["rollback"]
    if rb.get("failed"):
        out.append(f"Failed: {md.cell(rb.get('msg'))}")
    elif r["rollback_phases"]:
        out += md.table(["phase", "status", "duration (s)", "rows", "error"],
                        [(x["phase"], x["status"], str(x["duration_s"]), x["rows"], x["error"])
                         for x in r["rollback_phases"]])
    else:
        out.append(rb.get("note") or "Nothing to roll back.")
    out += ["", "## Rollback fidelity", ""]
    f = r["fidelity"]
    if not f:
        out.append("Not checked.")
    else:
        out.append(("Holds: the database after the full rollback is identical to the clone before phase 1"
                    if f.get("holds") else f"Does NOT hold: {f.get('difference_count')} difference(s)")
                   + " (catalog, roles and every table's rows; left out on purpose: "
                   + f"{', '.join(f.get('ignored', []))}).")
        out += [f"- {md.cell(line)}" for line in f.get("differences") or []]
    if len(r["reasons"]) > 1:
        out += ["", "## Every no-go reason", ""] + [f"{i}. {md.cell(x)}" for i, x in enumerate(r["reasons"], 1)]
    return "\n".join(out) + "\n"


def do_report(module: AnsibleModule) -> None:
    p = module.params
    if not p["report_dir"] or not p["stem"] or "/" in p["stem"]:
        module.fail_json(msg="action=report needs report_dir and a stem without directories")
    records, note = ledger_records(module, p["run_id"])
    applies = [r for r in records if r["direction"] == "apply"]
    rollbacks = [r for r in records if r["direction"] == "rollback"]
    already = [str(x) for x in (p["context"].get("already_applied") or [])]
    alerts = read_alerts(p["alerts_file"], applies)
    valid = validation(records)
    reasons = judge(p, applies, rollbacks, valid, alerts, already)
    report = json_safe({
        "kind": "rehearsal",
        "verdict": "no-go" if reasons else "go",
        "reason": reasons[0] if reasons else "",
        "reasons": reasons,
        "context": p["context"],
        "finished_at": utcnow(),
        "clone": p["clone"],
        "phases": [{"phase": r["phase"], "title": p["phase_titles"].get(r["phase"], ""), "status": r["status"],
                    "started_at": r["started_at"], "duration_s": r["duration_s"], "rows": r["rows_affected"],
                    "error": r["error"], "lock_waits": phase_lock_waits(r.get("details") or {}),
                    # Each file's measured seconds: the expected durations of playbooks/plan.yml.
                    "steps": [{"file": x.get("file"), "seconds": x.get("seconds")}
                              for x in (r.get("details") or {}).get("steps") or [] if isinstance(x, dict)]}
                   for r in applies],
        "validation": valid,
        "alerts": alerts,
        "rollback": p["rollback"],
        "rollback_phases": [{"phase": r["phase"], "status": r["status"], "duration_s": r["duration_s"],
                             "rows": r["rows_affected"], "error": r["error"]} for r in rollbacks],
        "fidelity": p["fidelity"],
        "ledger_note": note,
        "run_report": p["run_report"],
    })
    paths = report_pair_paths(p["report_dir"], p["stem"])
    if not module.check_mode:
        try:
            write_report_pair(paths, report, markdown(report))
        except OSError as exc:
            module.fail_json(msg=f"cannot write the rehearsal report in {p['report_dir']}: {exc.strerror or exc} "
                                 "(check migration_report_dir)")
    # A report is a record of the run, not a change to a database.
    module.exit_json(changed=False, verdict=report["verdict"], reason=report["reason"], reasons=reasons,
                     paths=paths, phases=report["phases"], validation=valid, alerts=alerts)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["fingerprint", "report"]),
            path=dict(type="path"),
            compare_to=dict(type="path"),
            ignore=dict(type="list", elements="str"),
            report_dir=dict(type="path"),
            stem=dict(type="str"),
            run_id=dict(type="str", default=""),
            context=dict(type="dict", default={}),
            clone=dict(type="dict", default={}),
            failure=dict(type="dict", default={}),
            stop=dict(type="dict", default={}),
            rollback=dict(type="dict", default={}),
            fidelity=dict(type="dict", default={}),
            alerts_file=dict(type="path"),
            phase_titles=dict(type="dict", default={}),
            phases=dict(type="list", elements="str", default=["1", "2", "3", "4", "5", "6"]),
            run_report=dict(type="str", default=""),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    if module.params["action"] == "fingerprint":
        if not module.params["path"]:
            module.fail_json(msg="action=fingerprint needs path")
        do_fingerprint(module)
    else:
        do_report(module)


if __name__ == "__main__":
    main()
