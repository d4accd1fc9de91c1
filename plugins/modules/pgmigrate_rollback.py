#!/usr/bin/python
# Roll phases back, precisely, and record it in the ledger.
#   plan (read-only): which phases a selection rolls back, in reverse order; refuses a phase that
#     applied later phases depend on (naming them), a database without a ledger, and objects of
#     the application that depend on what the rollback would drop.
#   run: each phase's revert files, as the migration's manifest lists them (graph: each step's
#     revert files with their stage, in the manifest's order), lock-safely. Phases run together
#     in ONE transaction (SQL and ledger records: all or nothing: the stage "final"), except
#     where a phase has files of the stage "batches" (e.g. phase 3 resetting overrides): those run
#     first, each batch in its own short transaction, because one long transaction would hold row
#     locks on live rows for its whole length. Before the batches, the stage "first" runs, each
#     file in a short transaction of its own (phase 3: close the transition, so nothing derives
#     the overrides again while the batches put them back); when the batches are not run (phase 2
#     rolled back too), those files open the phase's transaction instead.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_rollback
short_description: Plan and run the rollback of migration phases, recorded in the ledger
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - "C(plan) never changes anything. I(selection) is C([all]), C([data]) (phase 3's data only,
    allowed while later phases stay applied) or a list of phases. A phase counts as present when
    the ledger says it is applied, or its latest run did not finish (killed or failed half-way).
    It refuses a phase that applied later phases depend on (naming them), a database without a
    ledger, and objects of the application that depend on what the rollback would drop."
  - "C(run) runs each phase's revert files lock-safely, as the manifest lists them (I(graph)): each
    step's C(revert.files), in the manifest's order, by C(stage). Phases run together in one
    transaction (the stage C(final); SQL and ledger records - all or nothing), except where a
    phase has files of the stage C(batches): those run first (after the stage C(first), each file
    in a short transaction of its own), each batch in its own short transaction, with the
    I(throttle) between them. The transaction holds its locks for two round trips: every file in
    one query, the ledger records and C(COMMIT) in the next. C(run) records every phase it rolls
    back as running, then runs and finishes them; a failure marks them failed with the error and
    the file that raised it. Server notices C(pgmigrate: key=value) raised by the SQL become
    details of the ledger record (kept objects; rows deleted or reset, C(<what>_deleted=N) and
    C(<what>_reset=N), which make its row count)."
options:
  action:
    description: Plan the rollback (read-only) or run it.
    type: str
    required: true
    choices: [plan, run]
  selection:
    description: C(plan) - what to roll back - C([all]), C([data]) or phase numbers.
    type: list
    elements: str
    default: []
  graph:
    type: dict
    default: {}
    description: >-
      The migration manifest's phases - phase to C({requires - [...], steps - [...]}): the phase
      graph (C(plan)), and the revert files each step names with their stage (C(plan) and
      C(run)), relative to I(sql_root).
  sql_root:
    description: The migration's directory (C(migrations/ht036)), the root of the manifest's file paths.
    type: path
    required: true
  phases:
    type: list
    elements: str
    default: []
    description: C(run) - the phases to roll back, in order (the plan's C(targets)).
  scope:
    description: C(run) - the plan's C(scope), recorded with each phase.
    type: str
    default: phases
    choices: [all, phases, data]
  reason:
    description: C(run) - why, recorded with each phase.
    type: str
    default: ""
  discard_new_data:
    description:
      - "C(plan) - after the cutover (C(complete.yml)), a rollback that drops phase 2's tables and
        columns discards what the new application wrote into them: the plan counts it
        (C(new_data)) and refuses, naming the counts, unless this is true."
      - C(run) - recorded with each phase (with the counts, I(discarded_new_data)).
    type: bool
    default: false
  dependents:
    description: >-
      C(plan) - the migration's read-only query (a file relative to I(migration_dir), its manifest's
      C(rollback.dependents)) naming objects outside the migration that depend on what rolling back
      the phases (psql variable C(phases)) would drop; any row refuses the rollback before anything
      changes. Empty - no such check.
    type: str
    default: ""
  discarded_new_data:
    description: C(run) - the plan's C(new_data) counts, recorded with each phase when discarded.
    type: dict
    default: {}
  new_data:
    description:
      - C(plan) - what counts as the new application's data after the cutover, the migration's
        manifest's C(rollback.new_data) (docs/writing-a-migration.md). Empty - nothing is counted.
      - C(times) - each new table with the timestamp columns that tell a row created or changed
        since the cutover (those missing from the table are left out).
      - C(queries) - each a C(file) (relative to I(migration_dir)) returning rows of (what, count),
        run where every object it C(requires) exists.
    type: dict
    default: {}
  migration_dir:
    description: The migration's directory; the files I(new_data) names are relative to it.
    type: path
  run_id:
    description: C(run) - the run's id, recorded.
    type: str
  operator:
    description: C(run) - who rolls back, recorded.
    type: str
  approved_by:
    description: C(run) - who approved the rollback, recorded.
    type: str
  environment:
    description: C(run) - the environment, recorded.
    type: str
  batch_size:
    description: Rows of the first batch of a batches file.
    type: int
    default: 2000
  min_batch_size:
    description: The smallest batch a slow batch is cut down to.
    type: int
    default: 200
  max_batch_size:
    description: The largest batch a fast batch grows to.
    type: int
    default: 50000
  target_batch_ms:
    type: int
    default: 200
    description: A batch is cut (rolled back, retried smaller) at this many milliseconds.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
  - agency.pgmigrate.throttle
"""

EXAMPLES = r"""
- name: Plan the rollback of phase 3's data
  agency.pgmigrate.pgmigrate_rollback:
    action: plan
    selection: [data]
    # The manifest's phases: the phase graph, and each step's revert files by stage.
    graph: "{{ (lookup('ansible.builtin.file', 'migrations/ht036/manifest.yml') | from_yaml).phases }}"
    sql_root: migrations/ht036
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: rollback_plan

- name: Run it
  agency.pgmigrate.pgmigrate_rollback:
    action: run
    phases: "{{ rollback_plan.targets }}"
    scope: "{{ rollback_plan.scope }}"
    reason: p95 over the abort threshold
    graph: "{{ (lookup('ansible.builtin.file', 'migrations/ht036/manifest.yml') | from_yaml).phases }}"
    sql_root: migrations/ht036
    run_id: "{{ run_id }}"
    operator: alice
    environment: staging
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  when: rollback_plan.targets | length > 0
"""

RETURN = r"""
applied:
  description: C(plan) - the phases the ledger says are applied.
  returned: action is plan
  type: list
  elements: str
present:
  description: C(plan) - the phases present (applied, or whose latest run did not finish).
  returned: action is plan
  type: list
  elements: str
unfinished:
  description: C(plan) - the phases whose latest run did not finish, with that run's record.
  returned: action is plan
  type: dict
scope:
  description: C(plan) - C(all), C(data) or C(phases).
  returned: action is plan
  type: str
targets:
  description: C(plan) - the phases to roll back, latest first.
  returned: action is plan
  type: list
  elements: str
new_data:
  description: >-
    C(plan), when the targets include phase 2 - what the new application wrote since the cutover
    (C(cutover_at), C(counts) by kind, C(total)); null before the cutover.
  returned: action is plan and phase 2 is a target
  type: dict
  sample: {cutover_at: "2026-12-07T10:00:00+00:00", total: 3,
           counts: {"workflows rows created or changed": 2, "overrides relinked": 1}}
finalized:
  description: C(plan) - the ledger's record of the finalize that made a rollback of phase 3 impossible.
  returned: when refused for it
  type: dict
not_applied:
  description: C(plan) - selected phases that are not present (nothing to do for them).
  returned: action is plan
  type: list
  elements: str
files:
  description: C(plan) - the SQL files each target runs, relative to I(sql_root).
  returned: action is plan
  type: dict
phases:
  description: C(run) - the phases rolled back.
  returned: action is run
  type: list
  elements: str
record_ids:
  description: C(run) - the ledger record of each phase.
  returned: action is run and something was rolled back
  type: dict
outcome:
  description: C(run) - by phase, what its SQL reported (kept objects, deleted rows).
  returned: action is run and something was rolled back
  type: dict
lock_retries:
  description: C(run) - statements retried after a lock timeout or deadlock.
  returned: action is run and something was rolled back
  type: int
notes:
  description: C(run) - what the rollback kept and why, one line each.
  returned: action is run and something was rolled back
  type: list
  elements: str
"""

import collections
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    abandon,
    applied_phases,
    combined_checksum,
    connect,
    describe_target,
    fetch_dicts,
    file_checksums,
    file_directives,
    json_safe,
    ledger_exists,
    ledger_state,
    ledger_unfinished,
    quote_ident,
    render,
    run_transactional,
    transaction,
    with_lock_retry,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    applies,
    migration_sql,
    named_values,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_runlock import ensure_held
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import (
    THROTTLE_ARG,
    BatchCut,
    BatchSizer,
    Throttle,
    end_batches,
    run_capped,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import options as throttle_options

# The engine's own table the rollback's batches write; the application's come with the throttle
# option's tables (the migration's manifest, throttle.tables). The throttle counts the lock waiters on both.
THROTTLED_TABLES = ["migration_ledger.phase3_override_plan"]

NOTICE = re.compile(r"pgmigrate: (\w+)=(.*)")
# Raised before each revert file of a transaction: whose notices follow (run_group).
FILE_MARKER_SQL = "DO $pgmigrate$ BEGIN RAISE NOTICE 'pgmigrate-file: {}'; END $pgmigrate$;"
FILE_MARKER = re.compile(r"pgmigrate-file: (\d+)")
LIST_KEYS = {"kept", "dropped", "note", "done"}


def phase_key(phase: str) -> int:
    return int(phase) if phase.isdigit() else 0


def stage_files(root: str, graph: dict, phase: str, stage: str) -> list[str]:
    """The revert files of `phase` that the manifest gives `stage` (first, batches, final), in
    its order: the phase's steps in turn, each step's revert files in turn. The manifest alone
    decides what a rollback runs and when; no folder is listed."""
    steps = (graph.get(phase) or {}).get("steps") or []
    return [os.path.join(root, r["file"]) for step in steps if isinstance(step, dict)
            for r in ((step.get("revert") or {}).get("files") or []) if r.get("stage") == stage]


def revert_files(root: str, graph: dict, phase: str) -> list[str]:
    return stage_files(root, graph, phase, "final")


def first_files(root: str, graph: dict, phase: str) -> list[str]:
    return stage_files(root, graph, phase, "first")


def batch_files(root: str, graph: dict, phase: str) -> list[str]:
    return stage_files(root, graph, phase, "batches")


def check_revert_files(root: str, graph: dict, phases: list[str]) -> str | None:
    """Why the manifest cannot roll `phases` back (a phase it does not know, a revert file that
    is not there, a stage outside first/batches/final), or None."""
    unknown = [ph for ph in phases if ph not in graph]
    if unknown:
        return f"the migration's manifest (graph) has no phase {', '.join(unknown)}"
    reverts = [r for ph in phases for step in (graph[ph].get("steps") or []) if isinstance(step, dict)
               for r in ((step.get("revert") or {}).get("files") or [])]
    bad = [str(r.get("file")) for r in reverts if r.get("stage") not in ("first", "batches", "final")]
    if bad:
        return f"revert file(s) without a stage of first, batches or final in the manifest: {', '.join(bad)}"
    missing = [r["file"] for r in reverts if not os.path.isfile(os.path.join(root, r["file"]))]
    if missing:
        return f"revert file(s) the manifest names are not under {root}: {', '.join(missing)}"
    return None


# --- plan -----------------------------------------------------------------------------------

def present_phases(conn, graph: dict) -> tuple[list[str], list[str], dict]:
    """(applied, present, unfinished) restricted to the migration's phases."""
    applied = [p for p in applied_phases(ledger_state(conn)) if p in graph]
    unfinished = {p: r for p, r in ledger_unfinished(conn).items() if p in graph}
    present = sorted(set(applied) | set(unfinished), key=phase_key)
    return applied, present, unfinished


def refuse_dependents(phases: list[str], present: list[str], graph: dict) -> str | None:
    """The message refusing phases that present phases outside the selection depend on."""
    blocked = {}
    for phase in phases:
        users = [p for p in present if p not in phases and phase in graph[p].get("requires", [])]
        if users:
            blocked[phase] = sorted(users, key=phase_key, reverse=True)
    if not blocked:
        return None
    first = sorted(blocked, key=phase_key)[0]
    users = sorted({u for us in blocked.values() for u in us}, key=phase_key, reverse=True)
    msg = (f"phase {first} cannot be rolled back while phase(s) {', '.join(blocked[first])} "
           f"{'is' if len(blocked[first]) == 1 else 'are'} applied: they depend on it. Roll back "
           f"{', then '.join(users)} first (-e phase={users[0]}), or everything with -e phase=all.")
    if first == "3":
        msg += (" To roll back only the data phase 3 populated and keep the schema (phases 4 to 6 "
                "stay applied): -e phase=data.")
    return msg + " Nothing was changed."


def blocking_dependents(conn, migration_dir: str | None, query: str, phases: list[str]) -> list[dict]:
    if not query:
        return []
    sql = render(migration_sql(migration_dir, query), {"phases": "{" + ",".join(phases) + "}"})
    with conn.cursor() as cur:
        rows = fetch_dicts(cur, sql)
    conn.rollback()
    return rows


def last_apply_details(conn, phase: str) -> dict:
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT details FROM {LEDGER_SCHEMA}.history
                 WHERE phase = %s AND direction = 'apply' AND status = 'succeeded'
                 ORDER BY finished_at DESC, id DESC LIMIT 1""", (phase,))
        row = cur.fetchone()
    conn.rollback()
    return (row[0] if row else None) or {}


# What cleanup.yml -e cleanup_finalize=true drops (migrations/ht036/cleanup/030_finalize.sql).
FINALIZED_TABLES = ("migration_ledger.phase3_override_plan", "migration_ledger.phase3_override_sync",
                    "migration_ledger.phase3_inserted")

NEW_DATA_KEYS = ("times", "queries")


def new_data_plan(migration_dir: str | None, new_data: dict | None) -> dict:
    """The migration's rollback.new_data (its manifest), its files read and checked: {times,
    queries}. Empty: nothing is counted."""
    new_data = new_data or {}
    unknown = sorted(set(new_data) - set(NEW_DATA_KEYS)) if isinstance(new_data, dict) else ["(not a mapping)"]
    if unknown:
        raise MigrationError(f"the migration's rollback.new_data has unknown key(s) {', '.join(unknown)}: the known "
                             f"ones are {', '.join(NEW_DATA_KEYS)} (docs/writing-a-migration.md)")
    times = new_data.get("times") or {}
    if not isinstance(times, dict) or not all(isinstance(v, list) for v in times.values()):
        raise MigrationError("the migration's rollback.new_data.times must map each table to a list of its "
                             "timestamp columns (docs/writing-a-migration.md)")
    queries = []
    for entry in new_data.get("queries") or []:
        if not isinstance(entry, dict) or not entry.get("file"):
            raise MigrationError(f"each of the migration's rollback.new_data.queries needs a file, not {entry!r}")
        queries.append({**entry, "sql": migration_sql(migration_dir, entry["file"])})
    return {"times": {str(t): [str(c) for c in cols] for t, cols in times.items()}, "queries": queries}


def finalize_record(conn) -> dict | None:
    """The ledger's latest record of cleanup.yml's finalize, or None. Whatever its status: a
    finalize killed half-way may have dropped the tables already."""
    with conn.cursor() as cur:
        rows = fetch_dicts(cur, f"""SELECT coalesce(finished_at, started_at)::text AS finished_at, operator, status
                                      FROM {LEDGER_SCHEMA}.history
                                     WHERE phase = 'finalize'
                                     ORDER BY id DESC LIMIT 1""")
    conn.rollback()
    return rows[0] if rows else None


def new_data_since_cutover(conn, plan: dict) -> dict | None:
    """What the new application wrote into the migration's tables and columns since the cutover
    (docs/operations.md#a-rollback-after-the-cutover), or None before it. Read-only: counts by
    timestamps in the new tables, and the migration's own queries (its manifest's
    rollback.new_data, new_data_plan: for HT-036, by the ledger's records of what the migration
    wrote for the overrides)."""
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        cur.execute(f"SELECT to_regclass('{LEDGER_SCHEMA}.transition') IS NOT NULL")
        if not cur.fetchone()[0]:
            conn.rollback()
            return None
        cur.execute(f"SELECT completed_at FROM {LEDGER_SCHEMA}.transition ORDER BY id DESC LIMIT 1")
        row = cur.fetchone()
        if not row or row[0] is None:
            conn.rollback()
            return None
        cutover = row[0]
        for table, times in plan["times"].items():
            cur.execute("""SELECT array_agg(a.attname::text) FROM pg_attribute a
                            WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
                              AND a.attname = ANY(%s)""", (table, list(times)))
            columns = cur.fetchone()[0] or []
            present = [t for t in times if t in columns]
            if not present:
                continue
            where = " OR ".join(f"{quote_ident(col)} > %(t)s" for col in present)
            cur.execute(f"SELECT count(*) FROM {table} WHERE {where}", {"t": cutover})
            counts[f"{table} rows created or changed"] = cur.fetchone()[0]
        for query in plan["queries"]:
            if applies(cur, query):
                counts.update(named_values(cur, query["sql"]))
    conn.rollback()
    return {"cutover_at": cutover.isoformat(), "counts": counts, "total": sum(counts.values())}


def do_plan(module, conn) -> dict:
    p = module.params
    graph, selection = p["graph"], [str(s) for s in p["selection"]]
    if not ledger_exists(conn):
        module.fail_json(msg=f"{p['db_name']} has no migration ledger ({LEDGER_SCHEMA}.history): it "
                             "was never migrated, so there is nothing to roll back. Check "
                             "migration_db_name. Nothing was changed.")
    applied, present, unfinished = present_phases(conn, graph)
    result = {"changed": False, "applied": applied, "present": present, "unfinished": unfinished}
    if selection == ["all"]:
        scope, targets = "all", sorted(present, key=phase_key, reverse=True)
    elif selection == ["data"]:
        scope, targets = "data", (["3"] if "3" in present else [])
    else:
        unknown = [s for s in selection if s not in graph]
        if unknown or not selection:
            module.fail_json(msg=f"unknown phase(s) {', '.join(unknown) or '(none)'}: roll back "
                                 f"-e phase=1 .. -e phase={max(graph, key=phase_key)}, -e phase=data "
                                 "or -e phase=all. Nothing was changed.", **result)
        scope = "phases"
        targets = sorted({s for s in selection if s in present}, key=phase_key, reverse=True)
        refusal = refuse_dependents(targets, present, graph)
        if refusal:
            module.fail_json(msg=refusal, **result)
    result.update(scope=scope, targets=targets,
                  not_applied=[s for s in selection if s in graph and s not in present])
    finalized = finalize_record(conn)
    if finalized and "3" in targets:
        module.fail_json(
            msg=f"the migration was finalized at {finalized['finished_at']} by {finalized['operator']} "
                "(cleanup.yml -e cleanup_finalize=true): the records a precise rollback of phase 3 reads "
                f"({', '.join(FINALIZED_TABLES)}) were dropped, so it can no longer tell what phase 3 "
                "and the transition wrote from what the application wrote. Restore the phase-1 backup "
                "instead (restore.yml, docs/operations.md#restore), or roll back only later phases "
                "(-e phase=6). Nothing was changed.", finalized=finalized, **result)
    if "2" in targets:
        # After the cutover the new application writes the columns and tables phase 2 made;
        # rolling phase 2 back drops them, and what it wrote with them.
        new_data = new_data_since_cutover(conn, new_data_plan(p["migration_dir"], p["new_data"]))
        result["new_data"] = new_data
        if new_data and new_data["total"] and not p["discard_new_data"]:
            named = ", ".join(f"{n} {what}" for what, n in new_data["counts"].items() if n)
            module.fail_json(
                msg=f"since the cutover at {new_data['cutover_at']} the new application wrote into "
                    f"what rolling back phase(s) {', '.join(targets)} would drop: {named}. The rollback "
                    "would discard it. Export what must be kept first; then rerun with "
                    "-e rollback_discard_new_data=true to roll back all the same (the counts are "
                    "recorded in the ledger). Nothing was changed.", **result)
    if targets:
        blockers = blocking_dependents(conn, p["migration_dir"], p["dependents"], targets)
        if blockers:
            named = "; ".join(f"{b['dependent']} depends on {b['depends_on']}" for b in blockers)
            module.fail_json(
                msg=f"objects outside the migration depend on what rolling back phase(s) "
                    f"{', '.join(targets)} would drop: {named}. The rollback drops nothing with "
                    "CASCADE: drop or change those objects first (the migration did not create "
                    "them), then rerun. Nothing was changed.", blockers=blockers, **result)
    problem = check_revert_files(p["sql_root"], graph, targets)
    if problem:
        module.fail_json(msg=f"{problem}. Nothing was changed.", **result)
    result["files"] = {t: [os.path.relpath(f, p["sql_root"])
                           for f in first_files(p["sql_root"], graph, t) + batch_files(p["sql_root"], graph, t)
                           + revert_files(p["sql_root"], graph, t)]
                       for t in targets}
    return result


# --- run ------------------------------------------------------------------------------------

def parse_notices(lines) -> dict:
    """The `pgmigrate: key=value` notices among `lines`, as details."""
    out: dict = {}
    for line in lines:
        m = NOTICE.search(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip()
        if key in LIST_KEYS:
            if value:
                out.setdefault(key, []).append(value)
        else:
            out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def begin_records(conn, p: dict, phases: list[str], files: dict) -> dict[str, int]:
    ids = {}
    with transaction(conn) as cur:
        for phase in phases:
            sums = file_checksums(files[phase], p["sql_root"])
            cur.execute(
                f"UPDATE {LEDGER_SCHEMA}.history SET status = 'interrupted', finished_at = clock_timestamp() "
                "WHERE phase = %s AND status = 'running'", (phase,))
            cur.execute(
                f"""INSERT INTO {LEDGER_SCHEMA}.history
                       (run_id, phase, direction, status, operator, approved_by, environment,
                        checksum, files)
                    VALUES (%s, %s, 'rollback', 'running', %s, %s, %s, %s, %s) RETURNING id""",
                (p["run_id"], phase, p["operator"], p["approved_by"], p["environment"],
                 combined_checksum(sums), json.dumps(sums)))
            ids[phase] = cur.fetchone()[0]
    return ids


FINISH_SQL = (f"UPDATE {LEDGER_SCHEMA}.history SET status = %s, finished_at = clock_timestamp(), "
              "rows_affected = %s, details = %s, error = %s WHERE id = %s")


def finish_record(cur, record_id: int, status: str, rows: int, details: dict, error=None) -> None:
    cur.execute(FINISH_SQL, (status, rows, json.dumps(json_safe(details)), error, record_id))


def relation_exists(conn, name: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        found = cur.fetchone()[0]
    conn.rollback()
    return found


def run_first(conn, path: str, lock: dict) -> int:
    """A first/ file, as one short transaction in one round trip under lock_timeout, retried;
    returns retries."""
    with open(path, encoding="utf-8") as handle:
        sql = handle.read()
    return run_transactional(conn, sql, lock)[1]


def run_batches(conn, path: str, p: dict, lock: dict) -> dict:
    """Run a batch file again and again until a batch takes no row, each batch after the
    throttle's word (pgmigrate_throttle) and sized to stay under target_batch_ms (cut, rolled
    back and retried smaller when it reaches it). Returns the summed counters."""
    with open(path, encoding="utf-8") as handle:
        template = handle.read()
    for directive in file_directives(template):
        if directive.startswith("needs=") and not relation_exists(conn, directive[6:]):
            return {"skipped": f"{directive[6:]} does not exist"}
    sizer = BatchSizer(p["batch_size"], p["min_batch_size"], p["max_batch_size"], p["target_batch_ms"])
    totals = {"batches": 0, "lock_retries": 0, "cancelled": 0}
    started = time.monotonic()
    throttle = Throttle(p, p["throttle"], THROTTLED_TABLES, f"the rollback's batches ({os.path.basename(path)})")
    try:
        while True:
            share = throttle.wait()
            t0 = time.monotonic()
            try:
                row, retries = run_batch(conn, render(template, {"batch_size": sizer.size}), lock, sizer.cap_ms(),
                                         totals)
            except BatchCut:
                sizer.was_cut()
                continue
            totals["lock_retries"] += retries
            if not row.get("taken"):
                break
            totals["batches"] += 1
            for key, value in row.items():
                totals[key] = totals.get(key, 0) + int(value or 0)
            sizer.done(time.monotonic() - t0, bool(retries), share)
    finally:
        totals["throttle"] = throttle.summary()
        throttle.close()
        end_batches(conn)
    totals.update(seconds=round(time.monotonic() - started, 3), cut=sizer.cut, over_target=sizer.over_target)
    return totals


def run_batch(conn, sql: str, lock: dict, cap_ms: float | None, tally: dict | None = None) -> tuple[dict, int]:
    """One batch: one statement in one round trip, capped at cap_ms (its result row as a dict;
    cancelled batches run again are counted in tally["cancelled"])."""
    return run_capped(conn, sql, None, lock, cap_ms, tally)


def run_group(conn, group: list[str], p: dict, files: dict, ids: dict, extra: dict,
              lock: dict, current: dict) -> tuple[dict, int]:
    """Run the revert files of every phase of the group and finish their records, in ONE
    transaction, retried as a whole on a lock timeout. Returns ({phase: details}, retries).

    Two round trips while it holds locks, whatever the number of files and phases: BEGIN and
    every file go as one simple query (their locks are taken there), then the ledger's records
    and COMMIT as another, once the notices are read. Each file is preceded by a marker notice
    (`pgmigrate-file: N`), which says whose notices follow, and which file failed."""
    parts, order = ["BEGIN;"], []
    for phase in group:
        for path in files[phase]:
            with open(path, encoding="utf-8") as handle:
                raw = handle.read()
            if "no-transaction" in file_directives(raw):
                raise MigrationError(f"{path}: a revert file runs inside the rollback's transaction; "
                                     "remove its `-- pgmigrate: no-transaction` header")
            parts.append(FILE_MARKER_SQL.format(len(order)))
            # A file's last statement may end in a comment, or without its semicolon.
            parts.append(render(raw, p["sql_params"]) + "\n;")
            order.append((phase, path))
    script = "\n".join(parts)

    def work(cur):
        # Unbounded: psycopg2 keeps only the last 50 notices in its list.
        conn.notices = collections.deque()
        started = time.monotonic()
        try:
            cur.execute(script)
        except Exception:
            current["file"] = by_file(conn.notices, order, group)[1]
            abandon(cur)
            raise
        held_ms = round(1000 * (time.monotonic() - started), 1)
        notes = by_file(conn.notices, order, group)[0]
        out, updates, args = {}, [], []
        for phase in group:
            found = parse_notices(notes[phase])
            rows = sum(v for k, v in found.items()
                       if isinstance(v, int) and (k.endswith("_deleted") or k.endswith("_reset")))
            rows += int(extra[phase].get("batches", {}).get("reset", 0))
            details = {**extra[phase], **found}
            # How long the transaction had held its locks when its files were done (the
            # records and COMMIT follow in one round trip).
            details["transaction_ms"] = held_ms
            details["summary"] = summarise(details)
            updates.append(FINISH_SQL)
            args += ["succeeded", rows, json.dumps(json_safe(details)), None, ids[phase]]
            out[phase] = {"rows": rows, **details}
        try:
            cur.execute(";\n".join(updates) + ";\nCOMMIT", args)
        except Exception:
            abandon(cur)
            raise
        return out

    return with_lock_retry(conn, work, lock, transactional=False, sql=script)


def by_file(notices, order: list[tuple[str, str]], group: list[str]) -> tuple[dict, str | None]:
    """The notices each phase's files raised (those after their markers), and the file whose
    marker came last: the one running when the transaction failed."""
    notes: dict = {phase: [] for phase in group}
    path = None
    for line in notices:
        marker = FILE_MARKER.search(line)
        if marker:
            phase, path = order[int(marker.group(1))]
        elif path is not None:
            notes[phase].append(line)
    return notes, path


def summarise(details: dict) -> str:
    """One line for the operator: what a phase's rollback did."""
    parts = []
    b = details.get("batches") or {}
    if b.get("taken"):
        parts.append(f"{b.get('reset', 0)} override(s) put back in {b.get('batches', 0)} batch(es); "
                     f"{b.get('kept', 0)} changed by the application since phase 3 kept as they are")
        if (b.get("throttle") or {}).get("throttled_s"):
            parts.append(f"the batches {b['throttle']['line']}")
    if details.get("overrides_reset"):
        parts.append(f"{details['overrides_reset']} override(s) put back")
    deleted = [f"{v} {k[:-len('_deleted')].replace('_', ' ')}" for k, v in details.items()
               if k.endswith("_deleted") and isinstance(v, int)]
    if deleted:
        parts.append("deleted the rows phase 3 inserted: " + ", ".join(deleted))
    parts.extend(details.get("done", []))
    dropped = [d for d in details.get("dropped", []) if d]
    if dropped:
        parts.append("dropped " + ", ".join(dropped))
    if details.get("kept"):
        parts.append("kept " + "; ".join(k.split(",")[0] for k in details["kept"]))
    return "; ".join(parts) or "nothing to undo (recorded)"


def mark_failed(params: dict, conn, phases: list[str], ids: dict, error: str, extra: dict) -> None:
    """Record the failure; on a new connection when the failure took the old one with it (if
    that fails too, the next run marks the records interrupted)."""
    for attempt in (conn, None):
        try:
            if attempt is None:
                attempt = connect(params, "pgmigrate-rollback-run")
            attempt.rollback()
            with transaction(attempt) as cur:
                for phase in phases:
                    finish_record(cur, ids[phase], "failed", 0, extra.get(phase, {}), error)
            return
        except Exception:  # noqa: BLE001,S112 - psycopg2 errors: try a fresh connection once
            continue


def do_run(module, conn) -> dict:
    p = module.params
    phases = [str(x) for x in p["phases"]]
    root = p["sql_root"]
    graph = p["graph"]
    # Phase 2 rolled back in the same run drops phase 3's tables and columns: phase 3's rows go
    # with them, and its batches have nothing to do.
    phase2_follows = "2" in phases
    p["sql_params"] = {"phase2_follows": "true" if phase2_follows else "false"}
    problem = check_revert_files(root, graph, phases)
    if problem:
        module.fail_json(msg=f"{problem}. Nothing was changed.")
    batches = {ph: ([] if phase2_follows else batch_files(root, graph, ph)) for ph in phases}
    # first-stage files: on their own before the batches, or at the head of the phase's transaction.
    firsts = {ph: (first_files(root, graph, ph) if batches[ph] else []) for ph in phases}
    files = {ph: ([] if batches[ph] else first_files(root, graph, ph)) + revert_files(root, graph, ph)
             for ph in phases}
    recorded = {ph: firsts[ph] + batches[ph] + files[ph] for ph in phases}
    if module.check_mode:
        return {"changed": bool(phases), "phases": phases,
                "msg": f"would roll back phase(s) {', '.join(phases) or 'none'}"}
    if not phases:
        return {"changed": False, "phases": [], "msg": "nothing to roll back"}
    lock = {k: p[k] for k in LOCK_ARGS}
    extra = {ph: {"scope": p["scope"], "reason": p["reason"]} for ph in phases}
    if p["discard_new_data"] and p["discarded_new_data"]:
        for ph in phases:
            extra[ph]["discarded_new_data"] = p["discarded_new_data"]
    if "3" in phases:
        # The event window of the run being rolled back: a rerun of phase 3 within the same
        # migration reuses it, so it inserts the same events as the first run.
        since = last_apply_details(conn, "3").get("events_since")
        if since:
            extra["3"]["events_since"] = since
    # One run at a time per database: the run lock rollback.yml holds (or, for this module run
    # on its own, this session until it ends); held by another run, refused.
    ensure_held(conn, p["run_id"], describe_target(p))
    ids = begin_records(conn, p, phases, recorded)
    results: dict = {}
    retries = 0
    # Groups: consecutive phases without batches share one transaction.
    groups: list[list[str]] = []
    for ph in phases:
        if batches[ph] or not groups:
            groups.append([ph])
        else:
            groups[-1].append(ph)
    for group in groups:
        for ph in group:
            # Phases rolled back in one transaction: all of them, or none.
            extra[ph]["transaction"] = group
    done: list[str] = []
    current: dict = {"file": None}
    for group in groups:
        try:
            for path in firsts[group[0]]:
                current["file"] = path
                run_first(conn, path, lock)
            for path in batches[group[0]]:
                current["file"] = path
                # Several batch files (phase 3: the sync's overrides, then the plan's): summed.
                got, sums = run_batches(conn, path, p, lock), extra[group[0]].setdefault("batches", {})
                for key, value in got.items():
                    sums[key] = (sums.get(key, 0) + value) if isinstance(value, (int, float)) else value
            current["file"] = None
            out, tries = run_group(conn, group, p, files, ids, extra, lock, current)
        except Exception as exc:  # noqa: BLE001 - psycopg2 errors and MigrationError alike
            where = current["file"]
            error = f"{os.path.relpath(where, root) + ': ' if where else ''}{str(exc).strip()}"
            remaining = [ph for ph in phases if ph not in done]
            mark_failed(p, conn, remaining, ids, error, extra)
            module.fail_json(
                msg=f"rollback of phase {group[0]} failed: {error}. Phase(s) "
                    f"{', '.join(done) or 'none'} were rolled back; {', '.join(remaining)} not "
                    "(their changes were undone with the transaction). Fix the cause and rerun "
                    "the same command: it goes on from here.",
                done=done, failed=remaining, record_ids=ids)
        retries += tries
        results.update(out)
        done.extend(group)
    # What the operator must know: objects kept (and why), fallbacks taken.
    notes = [f"phase {ph}: {n}" for ph in phases
             for n in results[ph].get("kept", []) + results[ph].get("note", [])]
    return {"changed": True, "phases": phases, "record_ids": ids, "outcome": results,
            "lock_retries": retries, "notes": notes, "transactions": groups}


ACTIONS = {"plan": do_plan, "run": do_run}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=list(ACTIONS)),
            selection=dict(type="list", elements="str", default=[]),
            graph=dict(type="dict", default={}),
            sql_root=dict(type="path", required=True),
            phases=dict(type="list", elements="str", default=[]),
            scope=dict(type="str", default="phases", choices=["all", "phases", "data"]),
            reason=dict(type="str", default=""),
            discard_new_data=dict(type="bool", default=False),
            dependents=dict(type="str", default=""),
            discarded_new_data=dict(type="dict", default={}),
            new_data=dict(type="dict", default={}),
            migration_dir=dict(type="path"),
            run_id=dict(type="str"),
            operator=dict(type="str"),
            approved_by=dict(type="str"),
            environment=dict(type="str"),
            batch_size=dict(type="int", default=2000),
            min_batch_size=dict(type="int", default=200),
            max_batch_size=dict(type="int", default=50000),
            target_batch_ms=dict(type="int", default=200),
            throttle=THROTTLE_ARG,
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        required_if=[("action", "plan", ["graph"]),
                     ("action", "run", ["graph", "run_id", "operator", "environment"])],
        supports_check_mode=True,
    )
    try:
        throttle_options(module.params["throttle"])  # a bad option is refused before anything runs
        conn = connect(module.params, f"pgmigrate-rollback-{module.params['action']}")
        try:
            result = ACTIONS[module.params["action"]](module, conn)
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
