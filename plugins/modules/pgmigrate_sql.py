#!/usr/bin/python
# Run a phase's SQL files, lock-safely. Each file is one step:
#   * by default the whole file runs in one transaction under lock_timeout, sent in one round
#     trip so that it commits (and lets its locks go) as its last statement ends; a lock
#     timeout or deadlock rolls it back and it is retried with backoff;
#   * a file whose header says `-- pgmigrate: no-transaction` runs statement by statement in
#     autocommit (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT), each retried on its own; an
#     index left invalid by an interrupted concurrent build is dropped and built again;
#   * a file whose header says `-- pgmigrate: batches` runs its statements but the last once,
#     then the last again and again, one short transaction per batch, the throttle
#     (module_utils/pgmigrate_throttle.py) between batches, until a batch takes no row. The
#     batch statement walks a uuid key in order: from :'from' on (the smallest uuid, then the
#     one after the previous batch's last key), :batch_size keys, sized to target_batch_ms; it
#     returns one row: taken (keys looked at), last (the last of them), rows (rows written).
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_sql
short_description: Run SQL files under a short lock_timeout with retries and backoff
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - "Runs each file as one transaction under C(lock_timeout), sent in one round trip: the server
    commits it, and releases its locks, as its last statement ends. A lock timeout or a deadlock
    rolls it back and it is retried with backoff (the I(lock_timeout_ms) options)."
  - "A file whose header says C(-- pgmigrate: no-transaction) runs statement by statement in
    autocommit (C(CREATE INDEX CONCURRENTLY), C(VALIDATE CONSTRAINT)), each retried on its own;
    an index left invalid by an interrupted concurrent build is dropped and built again."
  - "A file whose header says C(-- pgmigrate: batches) runs its statements but the last once,
    then the last again and again, one short transaction per batch, sized to take well under
    I(target_batch_ms), with the I(throttle) between batches, until a batch takes no row."
  - "psql-style variables (:'name', :\"name\", :name) are filled from I(params). Check mode runs
    nothing and reports what would run."
options:
  files:
    description: The SQL files to run, in order.
    type: list
    elements: path
    required: true
  params:
    description: Values of the psql-style variables the files use.
    type: dict
    default: {}
  batch_size:
    description: Rows of the first batch of a batches file.
    type: int
    default: 1000
  min_batch_size:
    description: The smallest batch a batches file is cut down to.
    type: int
    default: 100
  max_batch_size:
    description: The largest batch a batches file grows to.
    type: int
    default: 50000
  target_batch_ms:
    type: int
    default: 200
    description: >-
      A batch is sized to take well under this many milliseconds, and cut (rolled back, retried
      smaller) at it.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
  - agency.pgmigrate.throttle
"""

EXAMPLES = r"""
- name: Apply phase 2's schema files lock-safely
  agency.pgmigrate.pgmigrate_sql:
    files:
      - migrations/ht036/phase2/deploy/010_columns.sql
      - migrations/ht036/phase2/deploy/030_indexes.sql
    params:
      schema: public
    db_host: db.example.internal
    db_name: app
    db_user: migrator
    lock_timeout_ms: 50
    lock_attempts: 60
"""

RETURN = r"""
steps:
  description: >-
    One entry per file (or statement) run, with its rows and lock retries; what would run in check
    mode.
  returned: always
  type: list
  elements: dict
rows:
  description: Rows the files changed, in total.
  returned: always
  type: int
lock_retries:
  description: How many times a statement was retried after a lock timeout or deadlock.
  returned: success
  type: int
"""

import re
import time
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    file_directives,
    render,
    run_transactional,
    split_statements,
    with_lock_retry,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import (
    THROTTLE_ARG,
    BatchCut,
    BatchSizer,
    Throttle,
    end_batches,
    run_capped,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import options as throttle_options

# A batches file's first batch starts at the smallest uuid, each next one just after the last
# key of the one before.
FIRST_KEY = "00000000-0000-0000-0000-000000000000"
LAST_KEY = (1 << 128) - 1

CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(\"?[\w.]+\"?)",
    re.IGNORECASE,
)


def drop_invalid_index(cur, name: str) -> bool:
    """An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index that IF NOT EXISTS would
    keep forever; find it and drop it so the build can start again."""
    cur.execute(
        """SELECT i.indexrelid::regclass::text
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relname = %s AND c.relnamespace = ANY (current_schemas(false)::regnamespace[])
              AND NOT (i.indisvalid AND i.indisready)""",
        (name.strip('"'),))
    row = cur.fetchone()
    if not row:
        return False
    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row[0]}")
    return True


def run_autocommit(conn, sql: str, lock: dict) -> tuple[int, int, list[str]]:
    rows, retries, rebuilt = 0, 0, []
    for statement in split_statements(sql):
        index = CONCURRENT_INDEX.search(statement)

        # A retry, or the next run, first drops the invalid index a failed build left behind.
        def work(cur, statement=statement, index=index):
            if index and drop_invalid_index(cur, index.group(1)):
                rebuilt.append(index.group(1))
            cur.execute(statement)
            return max(cur.rowcount, 0)

        done, tries = with_lock_retry(conn, work, lock, transactional=False, sql=statement)
        rows += done
        retries += tries
    return rows, retries, rebuilt


def run_batched(conn, raw: str, p: dict, lock: dict, name: str) -> dict:
    """A batches file: every statement but the last once (its own transaction), then the last
    batch after batch until one takes no row."""
    statements = split_statements(raw)
    head, batch = statements[:-1], statements[-1]
    rows = retries = 0
    for statement in head:
        done, tries = run_transactional(conn, render(statement, p["params"]), lock)
        retries += tries
    sizer = BatchSizer(p["batch_size"], p["min_batch_size"], p["max_batch_size"], p["target_batch_ms"])
    start, batches = FIRST_KEY, 0
    tally = {"cancelled": 0}
    throttle = Throttle(p, p["throttle"], [], name)
    try:
        while True:
            share = throttle.wait()
            sql = render(batch, {**p["params"], "from": start, "batch_size": sizer.size})
            started = time.monotonic()
            try:
                row, tries = run_capped(conn, sql, None, lock, sizer.cap_ms(), tally)
            except BatchCut:
                sizer.was_cut()
                continue
            retries += tries
            if not row.get("taken"):
                break
            batches += 1
            rows += int(row.get("rows") or 0)
            sizer.done(time.monotonic() - started, bool(tries), share)
            if uuid.UUID(row["last"]).int == LAST_KEY:
                break
            start = str(uuid.UUID(int=uuid.UUID(row["last"]).int + 1))
    finally:
        throttled = throttle.summary()
        throttle.close()
        end_batches(conn)
    return {"rows": rows, "lock_retries": retries, "batches": batches, "batches_cut": sizer.cut,
            "batches_over_target": sizer.over_target, "batches_cancelled": tally["cancelled"],
            "throttle": throttled}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="path", required=True),
            params=dict(type="dict", default={}),
            batch_size=dict(type="int", default=1000),
            min_batch_size=dict(type="int", default=100),
            max_batch_size=dict(type="int", default=50000),
            target_batch_ms=dict(type="int", default=200),
            throttle=THROTTLE_ARG,
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    lock = {k: p[k] for k in LOCK_ARGS}
    steps = []
    try:
        throttle_options(p["throttle"])  # a bad option is refused before anything runs
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode:
        for path in p["files"]:
            steps.append({"file": path, "would_run": True})
        module.exit_json(changed=bool(steps), steps=steps, rows=0,
                         msg=f"would run {len(steps)} SQL file(s)")
    try:
        conn = connect(p, "pgmigrate-sql")
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    total_rows = 0
    try:
        for path in p["files"]:
            with open(path, encoding="utf-8") as handle:
                raw = handle.read()
            sql = render(raw, p["params"])
            started = time.monotonic()
            step = {"file": path}
            try:
                if "batches" in file_directives(raw):
                    step.update(run_batched(conn, raw, p, lock, f"{path}'s batches"))
                    rows, retries = step["rows"], step["lock_retries"]
                elif "no-transaction" in file_directives(raw):
                    rows, retries, rebuilt = run_autocommit(conn, sql, lock)
                    step["rebuilt_invalid_indexes"] = rebuilt
                else:
                    rows, retries = run_transactional(conn, sql, lock)
            except MigrationError as exc:
                module.fail_json(msg=f"{path}: {exc}", steps=steps)
            except Exception as exc:  # noqa: BLE001 - psycopg2.Error and friends: report file and statement
                module.fail_json(msg=f"{path} failed: {str(exc).strip()}", steps=steps)
            step.update(rows=max(rows, 0), lock_retries=retries,
                        seconds=round(time.monotonic() - started, 3))
            total_rows += max(rows, 0)
            steps.append(step)
    finally:
        conn.close()
    module.exit_json(changed=True, steps=steps, rows=total_rows,
                     lock_retries=sum(s["lock_retries"] for s in steps))


if __name__ == "__main__":
    main()
