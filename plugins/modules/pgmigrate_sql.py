#!/usr/bin/python
# Run a phase's SQL files, lock-safely. Each file is one step:
#   * by default the whole file runs in one transaction under SET LOCAL lock_timeout; a lock
#     timeout or deadlock rolls it back and it is retried with backoff;
#   * a file whose header says `-- pgmigrate: no-transaction` runs statement by statement in
#     autocommit (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT), each retried on its own; an
#     index left invalid by an interrupted concurrent build is dropped and built again.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_sql
short_description: Run SQL files under a short lock_timeout with retries and backoff
description:
  - "Runs each file as one transaction, or statement by statement in autocommit when its header
    says C(-- pgmigrate: no-transaction). psql-style variables (:'name', :\"name\", :name) are
    filled from I(params). Check mode runs nothing and reports what would run."
options:
  files: {type: list, elements: path, required: true}
  params: {type: dict, default: {}}
"""

import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    file_directives,
    render,
    split_statements,
    with_lock_retry,
)

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


def run_transactional(conn, sql: str, lock: dict) -> tuple[int, int]:
    def work(cur):
        cur.execute(sql)
        return cur.rowcount

    return with_lock_retry(conn, work, lock, transactional=True, sql=sql)


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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="path", required=True),
            params=dict(type="dict", default={}),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    lock = {k: p[k] for k in LOCK_ARGS}
    steps = []
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
                if "no-transaction" in file_directives(raw):
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
