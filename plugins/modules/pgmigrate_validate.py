#!/usr/bin/python
# Phase 6's validator: the integrity checks (migrations/ht036/phase6/checks.sql), the access check
# (migrations/ht036/phase5/verify/access.sql), tenant isolation as real authenticated sessions, and
# the strategy's cross-system queries timed for their p95 (server-side, under EXPLAIN ANALYZE).
# Read-only: everything runs in transactions that are rolled back.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_validate
short_description: Validate the migrated database and time the cross-system queries
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - Phase 6's validator - the integrity checks of I(checks_file), the access check of
    I(access_file) (what PUBLIC, anon and authenticated may use of what the migration created,
    row-level security, fixed search_paths), tenant isolation as real authenticated sessions
    (row-level security), and the strategy's cross-system queries of
    I(queries_file) timed for their p95 (server-side, under EXPLAIN ANALYZE).
  - Read-only - everything runs in transactions that are rolled back.
  - Returns every check with passed, observed and expected, and the names of the failed ones.
    It never fails by itself; the caller decides (phase 6 fails the run on any failed check).
options:
  checks_file:
    description: The integrity checks (C(migrations/ht036/phase6/verify/checks.sql)).
    type: path
    required: true
  access_file:
    description:
      - The access check (C(migrations/ht036/phase5/verify/access.sql)), run like I(checks_file); phase 5
        runs it too. Omitted, no access check.
    type: path
  queries_file:
    description: The cross-system queries to time (C(migrations/ht036/phase6/verify/cross_system_queries.sql)).
    type: path
    required: true
  params:
    description: Values of the psql-style variables the files use.
    type: dict
    default: {}
  query_runs:
    description: How many times each cross-system query is timed.
    type: int
    default: 20
  p95_target_ms:
    description: The p95 a cross-system query must stay under, in milliseconds.
    type: float
    default: 2000
  claim_path:
    description: >-
      Where the client id sits in the JWT claims of an authenticated session (the tenant isolation
      checks).
    type: list
    elements: str
    default: [app_metadata, client_id]
  tenant_role:
    description: The role the tenant isolation checks run as.
    type: str
    default: authenticated
  isolation:
    description:
      - The migration's tenant isolation check, its manifest's C(isolation) section
        (docs/writing-a-migration.md). Empty - no isolation check.
      - C(clients) - C(relation), C(column) - the first two client ids found there are the clients
        the check acts as (fewer than two - skipped).
      - C(reads) - each C(relation), C(column) - as each client, at least one row of its own and
        none of another's.
      - C(writes) - each C(relation), C(column), C(touch) - as each client, an update of the other
        clients' rows (C(touch) set to itself) changes none.
    type: dict
    default: {}
  report_file:
    type: path
    description: Where to write the result as JSON (directory 0750, file 0640), with I(report_meta).
  report_meta:
    description: Fields added to the JSON of I(report_file) (run id, host).
    type: dict
    default: {}
  events_since_from_ledger:
    type: bool
    default: false
    description:
      - Set C(params.events_since) to the event window phase 3's latest successful apply used (its
        ledger record; C(-infinity) without one), read here rather than by a task of its own.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Validate the migrated database
  agency.pgmigrate.pgmigrate_validate:
    checks_file: migrations/ht036/phase6/verify/checks.sql
    access_file: migrations/ht036/phase5/verify/access.sql
    queries_file: migrations/ht036/phase6/verify/cross_system_queries.sql
    events_since_from_ledger: true
    report_file: reports/validation.json
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: validation

- name: Fail the run on a failed check
  ansible.builtin.assert:
    that: validation.passed
    fail_msg: "failed checks: {{ validation.failed_checks | join(', ') }}"
"""

RETURN = r"""
passed:
  description: Whether every check passed.
  returned: success
  type: bool
failed_checks:
  description: The names of the failed checks.
  returned: success
  type: list
  elements: str
checks:
  description: >-
    Every check with C(check) (its name), C(passed), C(observed) and C(expected); a timed query also
    with its p50, p95 and max.
  returned: success
  type: list
  elements: dict
"""

import json
import math
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    connect,
    json_safe,
    quote_ident,
    render,
    split_statements,
    strip_comments,
)


def run_checks(conn, sql: str) -> list[dict]:
    checks = []
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for statement in split_statements(sql):
            cur.execute(statement)
            for name, passed, observed, expected in cur.fetchall():
                checks.append({"check": name, "passed": bool(passed),
                               "observed": observed, "expected": expected})
    conn.rollback()
    return checks


def claims_for(client_id: str, path: list[str]) -> str:
    claims: dict = {"role": "authenticated"}
    node = claims
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = client_id
    return json.dumps(claims)


ISOLATION_KEYS = {"clients": ("relation", "column"), "reads": ("relation", "column"),
                  "writes": ("relation", "column", "touch")}


def isolation_plan(isolation: dict | None) -> dict | None:
    """The migration's tenant isolation check (its manifest's isolation section), checked; None
    without one (no isolation check)."""
    if not isolation:
        return None
    unknown = sorted(set(isolation) - set(ISOLATION_KEYS)) if isinstance(isolation, dict) else ["(not a mapping)"]
    if unknown:
        raise MigrationError(f"the migration's isolation section has unknown key(s) {', '.join(unknown)}: the "
                             f"known ones are {', '.join(ISOLATION_KEYS)} (docs/writing-a-migration.md)")
    entries = {"clients": [isolation.get("clients")], "reads": isolation.get("reads") or [],
               "writes": isolation.get("writes") or []}
    for key, entries_of in entries.items():
        for entry in entries_of:
            if not isinstance(entry, dict) or not all(entry.get(k) for k in ISOLATION_KEYS[key]):
                raise MigrationError(f"the migration's isolation.{key} needs {', '.join(ISOLATION_KEYS[key])}, "
                                     f"not {entry!r} (docs/writing-a-migration.md)")
    return {"clients": isolation["clients"], "reads": entries["reads"], "writes": entries["writes"]}


def isolation_checks(conn, role: str, path: list[str], isolation: dict) -> list[dict]:
    """As two different clients, through a real authenticated session: each sees only its own
    rows in the migration's RLS tables and granted views (isolation: its manifest's reads), and
    cannot write another client's row (writes)."""
    name = "security.tenant_isolation"
    with conn.cursor() as cur:
        # Since PostgreSQL 16 a CREATEROLE login (a managed database's) holds the roles it created
        # WITH ADMIN OPTION but may not SET ROLE to them: it grants itself SET inside each check's
        # transaction, which the rollback after the check takes back.
        cur.execute("SELECT current_setting('server_version_num')::int >= 160000")
        if cur.fetchone()[0]:
            cur.execute("SELECT pg_has_role(current_user, %s, 'SET'), "
                        "pg_has_role(current_user, %s, 'MEMBER WITH ADMIN OPTION')", (role, role))
            can_set, admin = cur.fetchone()
        else:
            cur.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,))
            can_set, admin = cur.fetchone()[0], False
        grant_self = not can_set and admin
        if not (can_set or admin):
            conn.rollback()
            return [{"check": name, "passed": True, "skipped": True, "observed": "skipped",
                     "expected": f"{role} sessions see one client",
                     "note": f"the migration user cannot SET ROLE {role}; not verified here"}]
        source = isolation["clients"]
        column = quote_ident(source["column"])
        cur.execute(f"""SELECT {column}::text FROM {quote_ident(source["relation"])}
                         GROUP BY {column} ORDER BY {column} LIMIT 2""")
        clients = [r[0] for r in cur.fetchall()]
    conn.rollback()
    if len(clients) < 2:
        return [{"check": name, "passed": True, "skipped": True, "observed": "skipped",
                 "expected": f"two clients with {source['relation']}", "note": "fewer than two clients"}]
    leaks = []
    for client in clients:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('request.jwt.claims', %s, true)",
                        (claims_for(client, path),))
            if grant_self:
                cur.execute(f"GRANT {role} TO CURRENT_USER WITH INHERIT FALSE, SET TRUE")
            cur.execute(f"SET LOCAL ROLE {role}")
            for read in isolation["reads"]:
                relation, column = read["relation"], quote_ident(read["column"])
                cur.execute(f"SELECT count(*) FILTER (WHERE {column} = %s), "
                            f"count(*) FILTER (WHERE {column} <> %s) FROM {quote_ident(relation)}",
                            (client, client))
                own, others = cur.fetchone()
                if own < 1 or others:
                    leaks.append(f"{relation} as {client}: own={own} others={others}")
            for write in isolation["writes"]:
                relation, touch = write["relation"], quote_ident(write["touch"])
                cur.execute(f"UPDATE {quote_ident(relation)} SET {touch} = {touch} "
                            f"WHERE {quote_ident(write['column'])} <> %s", (client,))
                if cur.rowcount:
                    leaks.append(f"{relation}: {client} updated {cur.rowcount} foreign rows")
        conn.rollback()
    return [{"check": name, "passed": not leaks, "observed": "; ".join(leaks) or "isolated",
             "expected": "each client sees and writes only its own rows"}]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


def time_queries(conn, sql: str, runs: int, target_ms: float) -> list[dict]:
    """Each query `runs` times under EXPLAIN (ANALYZE, TIMING OFF): planning plus execution time
    as the server measures it, the rows counted but never shipped. Fetching them (100,000 rows
    of a wide view, twenty times) would keep a second CPU busy in the controller and
    the network stack, which on a small server is the application's."""
    results = []
    for statement in split_statements(sql):
        timings = []
        rows = 0
        for _run in range(runs):
            with conn.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement)
                plan = cur.fetchone()[0][0]
                rows = int(plan["Plan"].get("Actual Rows", 0))
                timings.append(float(plan.get("Planning Time", 0)) + float(plan["Execution Time"]))
            conn.rollback()
        p95 = percentile(timings, 95)
        query = " ".join(strip_comments(statement).split())
        results.append({"check": "performance.p95: " + query, "passed": p95 < target_ms,
                        "observed": f"{p95:.1f} ms", "expected": f"< {target_ms:.0f} ms",
                        "query": query, "runs": runs, "rows": rows,
                        "p50_ms": round(percentile(timings, 50), 2), "p95_ms": round(p95, 2),
                        "max_ms": round(max(timings), 2)})
    return results


def write_report(module, path: str, report: dict) -> None:
    """The result as JSON in the reports directory: an artifact of the run, not a change."""
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(report, indent=4, sort_keys=True, default=str) + "\n")
    except OSError as exc:
        module.fail_json(msg=f"cannot write the validation report {path}: {exc.strerror or exc} "
                             "(check migration_report_dir)")


def phase3_window(conn) -> str:
    """The event window phase 3's latest successful apply used, '-infinity' without one."""
    with conn.cursor() as cur:
        cur.execute(f"""SELECT details ->> 'events_since' FROM {LEDGER_SCHEMA}.history
                         WHERE phase = '3' AND direction = 'apply' AND status = 'succeeded'
                         ORDER BY finished_at DESC LIMIT 1""")
        row = cur.fetchone()
    conn.rollback()
    return (row[0] if row else None) or "-infinity"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            checks_file=dict(type="path", required=True),
            access_file=dict(type="path"),
            queries_file=dict(type="path", required=True),
            params=dict(type="dict", default={}),
            query_runs=dict(type="int", default=20),
            p95_target_ms=dict(type="float", default=2000),
            claim_path=dict(type="list", elements="str", default=["app_metadata", "client_id"]),
            tenant_role=dict(type="str", default="authenticated"),
            isolation=dict(type="dict", default={}),
            report_file=dict(type="path"),
            report_meta=dict(type="dict", default={}),
            events_since_from_ledger=dict(type="bool", default=False),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    with open(p["checks_file"], encoding="utf-8") as handle:
        checks_template = handle.read()
    with open(p["queries_file"], encoding="utf-8") as handle:
        queries_sql = handle.read()
    access_sql = ""
    if p["access_file"]:
        with open(p["access_file"], encoding="utf-8") as handle:
            access_sql = handle.read()
    try:
        isolation = isolation_plan(p["isolation"])
        conn = connect(p, "pgmigrate-validate")
        try:
            params = dict(p["params"])
            # Without the time a drain began, every entry of the transition's queue fails
            # transition.queue_drained.
            params.setdefault("queue_drained_since", "infinity")
            if p["events_since_from_ledger"]:
                params["events_since"] = phase3_window(conn)
            checks = run_checks(conn, render(checks_template, params))
            if access_sql:
                checks += run_checks(conn, access_sql)
            if isolation is not None:
                checks += isolation_checks(conn, p["tenant_role"], p["claim_path"], isolation)
            checks += time_queries(conn, queries_sql, p["query_runs"], p["p95_target_ms"])
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # noqa: BLE001 - a check that errors is a failed validation, reported as such
        module.fail_json(msg=f"validator error: {str(exc).strip()}")
    failed = [c["check"] for c in checks if not c["passed"]]
    if p["report_file"]:
        write_report(module, p["report_file"],
                     {**p["report_meta"], "passed": not failed, "failed": failed, "checks": json_safe(checks)})
    # Not `failed=`: Ansible would take a non-empty list there for the task's own failure
    # ("Unknown error") before the role could write the report and name the checks.
    module.exit_json(changed=False, passed=not failed, failed_checks=failed, checks=json_safe(checks))


if __name__ == "__main__":
    main()
