#!/usr/bin/python
# Phase 3's batched backfill: apply the linkage plan in many short transactions, each under a
# short lock_timeout, sized so a batch takes about target_batch_ms. Row locks are held for one
# batch only, so application writes to an override wait at most one batch.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_backfill
short_description: Apply phase 3's linkage plan in short batches
description:
  - C(bounds) (read-only) splits the plan into chunks of about I(chunk_rows) rows and reports how
    names shared by several modules were resolved.
  - C(run) applies one chunk (I(lo) to I(hi)) with the batch SQL file, batch by batch.
options:
  action: {type: str, required: true, choices: [bounds, run]}
  plan_table: {type: str, default: migration_ledger.phase3_override_plan}
  batch_file: {type: path}
  chunk_rows: {type: int, default: 100000}
  lo: {type: str}
  hi: {type: str}
  batch_size: {type: int, default: 2000}
  min_batch_size: {type: int, default: 200}
  max_batch_size: {type: int, default: 50000}
  target_batch_ms: {type: int, default: 200}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    fetch_dicts,
    json_safe,
    render,
    with_lock_retry,
)


def bounds(conn, plan: str, chunk_rows: int) -> dict:
    # uuid has no min()/max(); its text form in the C collation sorts like the uuid itself.
    with conn.cursor() as cur:
        stats = fetch_dicts(cur, f"""
            SELECT count(*) AS planned,
                   count(*) FILTER (WHERE candidates > 1) AS ambiguous,
                   count(*) FILTER (WHERE chosen_by = 'installed') AS ambiguous_resolved_by_installation,
                   count(*) FILTER (WHERE chosen_by = 'oldest_listing') AS ambiguous_resolved_by_oldest_listing,
                   count(*) FILTER (WHERE installation_id IS NOT NULL) AS with_installation
              FROM {plan}""")[0]
        chunks = fetch_dicts(cur, f"""
            SELECT min(override_id::text COLLATE "C") AS lo, max(override_id::text COLLATE "C") AS hi,
                   count(*) AS rows
              FROM (SELECT override_id,
                           (row_number() OVER (ORDER BY override_id) - 1) / %s AS chunk
                      FROM {plan}) s
             GROUP BY chunk ORDER BY chunk""", (chunk_rows,))
    conn.rollback()
    done = 0
    for number, chunk in enumerate(chunks, 1):
        done += chunk["rows"]
        chunk.update(number=number, rows_through=done)
    return {"stats": stats, "chunks": json_safe(chunks), "total": stats["planned"]}


def next_batch(conn, plan: str, after: str | None, lo: str, hi: str, size: int):
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT min(override_id::text COLLATE "C"), max(override_id::text COLLATE "C"),
                       count(*)
                  FROM (SELECT override_id FROM {plan}
                         WHERE override_id BETWEEN %(lo)s AND %(hi)s
                           AND (%(after)s::uuid IS NULL OR override_id > %(after)s::uuid)
                         ORDER BY override_id LIMIT %(size)s) s""",
            {"lo": lo, "hi": hi, "after": after, "size": size})
        row = cur.fetchone()
    conn.rollback()
    return row


def run_chunk(conn, p: dict, lock: dict) -> dict:
    with open(p["batch_file"], encoding="utf-8") as handle:
        template = handle.read()
    size, after = p["batch_size"], None
    updated = batches = retries = 0
    started = time.monotonic()
    slowest = 0.0
    while True:
        first, last, count = next_batch(conn, p["plan_table"], after, p["lo"], p["hi"], size)
        if not count:
            break
        sql = render(template, {"lo": first, "hi": last})
        t0 = time.monotonic()

        def work(cur, sql=sql):
            cur.execute(sql)
            return cur.rowcount

        rows, tries = with_lock_retry(conn, work, lock, transactional=True)
        elapsed = max(time.monotonic() - t0, 1e-4)
        slowest = max(slowest, elapsed)
        updated += rows
        batches += 1
        retries += tries
        after = last
        # Aim every batch at target_batch_ms: halve or double at most per step.
        factor = min(2.0, max(0.5, p["target_batch_ms"] / 1000.0 / elapsed))
        size = int(min(p["max_batch_size"], max(p["min_batch_size"], size * factor)))
    seconds = time.monotonic() - started
    return {"rows": updated, "batches": batches, "lock_retries": retries,
            "seconds": round(seconds, 3), "slowest_batch_s": round(slowest, 3),
            "rows_per_second": int(updated / seconds) if seconds > 0 else updated,
            "next_batch_size": size}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["bounds", "run"]),
            plan_table=dict(type="str", default="migration_ledger.phase3_override_plan"),
            batch_file=dict(type="path"),
            chunk_rows=dict(type="int", default=100000),
            lo=dict(type="str"),
            hi=dict(type="str"),
            batch_size=dict(type="int", default=2000),
            min_batch_size=dict(type="int", default=200),
            max_batch_size=dict(type="int", default=50000),
            target_batch_ms=dict(type="int", default=200),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        required_if=[("action", "run", ["batch_file", "lo", "hi"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["action"] == "run" and module.check_mode:
        module.exit_json(changed=True, msg=f"would link overrides {p['lo']} to {p['hi']}")
    try:
        conn = connect(p, "pgmigrate-backfill")
        try:
            if p["action"] == "bounds":
                module.exit_json(changed=False, **bounds(conn, p["plan_table"], p["chunk_rows"]))
            result = run_chunk(conn, p, {k: p[k] for k in LOCK_ARGS})
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=result["rows"] > 0, **result)


if __name__ == "__main__":
    main()
