#!/usr/bin/python
# Phase 3's batched backfill: apply the linkage plan in many short transactions, each under a
# short lock_timeout, sized so a batch takes well under target_batch_ms and cut (rolled back,
# retried smaller) when it reaches it. Row locks are held for one batch only, so an application
# write to an override waits at most one batch. Between batches the throttle
# (module_utils/pgmigrate_throttle.py) slows the batches down or pauses them while the
# application suffers.
#
# The plan is walked in the table's physical order (plan rows carry planned_ctid, where each
# override was when planned): a batch is a range of heap pages, so it reads and writes a few
# contiguous pages of both tables, and finding the next batch costs no query.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_backfill
short_description: Plan phase 3's linkage and apply it in short batches
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - C(plan) first fixes the event window and runs I(setup_files) (the linkage rule and the
    transition's sync) in one short transaction of their own, so the sync is in place before
    the plan's snapshot is taken and nothing the application does waits for the plan. It then
    runs the plan SQL file (under lock_timeout, retried with backoff), splits the plan into
    chunks of about I(chunk_rows) rows (ranges of heap pages), reports how names shared by several
    modules were resolved, and returns the start of the integration-event window (the server's
    now() minus I(event_window_days)), fixed once for the run.
  - C(bounds) (read-only) does the same without running the plan file.
  - C(drain) applies the transition's queue (C(migration_ledger.transition_queue), what today's
    application's writes derive in other rows) with C(migration_ledger.transition_drain()), in
    short transactions under the I(throttle), until nothing queued before it began is left. An
    entry an application transaction keeps from it (its client's advisory lock, or a locked
    override) is tried again with backoff for up to I(lock_attempts) passes; then it fails,
    naming the cause, unless I(drain_may_leave). Nothing to do without a transition queue. In
    check mode it only reads the queue's depth.
  - C(run) applies one chunk (pages I(lo) to I(hi), I(hi) excluded) with the batch SQL file,
    batch by batch, adapting the batch to take about I(target_batch_ms). A batch never waits for
    a row lock (SKIP LOCKED); the pages of rows it skipped are linked again in later passes.
    Between batches the I(throttle) slows the batches down or pauses them while the application
    suffers.
options:
  action:
    description: Plan the linkage, read the plan's chunks, or run one chunk.
    type: str
    required: true
    choices: [plan, bounds, run, drain]
  plan_table:
    description: The table the plan file fills, one row per override to link.
    type: str
    default: migration_ledger.phase3_override_plan
  plan_file:
    description: C(plan) - the plan SQL file (C(migrations/ht036/phase3/deploy/010_plan.sql)).
    type: path
  setup_files:
    description: C(plan) - SQL files run before the plan, in one transaction of their own.
    type: list
    elements: path
    default: []
  batch_file:
    description: C(run) - the batch SQL file (C(migrations/ht036/phase3/deploy/020_link_batch.sql)).
    type: path
  chunk_rows:
    description: Plan rows per chunk.
    type: int
    default: 100000
  event_window_days:
    description: Days of integration events phase 3 inserts, counted back from the server's now().
    type: int
    default: 7
  lo:
    description: C(run) - the first heap page of the chunk.
    type: int
  hi:
    description: C(run) - the heap page after the chunk.
    type: int
  rows:
    description: C(run) - plan rows in the chunk (sizes the first batch).
    type: int
  batch_size:
    description: Rows in the first batch.
    type: int
    default: 1000
  min_batch_size:
    description: The smallest batch a slow batch is cut down to.
    type: int
    default: 100
  max_batch_size:
    description: The largest batch a fast batch grows to.
    type: int
    default: 20000
  target_batch_ms:
    description:
      - How long a batch should take, in milliseconds. Each batch also runs under a
        statement_timeout of it, so it holds its row locks no longer.
    type: int
    default: 25
  workers:
    description: C(run) - sessions linking a chunk side by side.
    type: int
    default: 2
  drain_may_leave:
    description:
      - C(drain) - succeed although entries an application transaction kept from the drain are
        left (counted in C(left)), instead of failing.
    type: bool
    default: false
  reuse_rolled_back_window:
    type: bool
    default: false
    description:
      - C(plan), C(bounds) - return as C(events_since) the window of a phase-3 run rolled back
        within this migration (after phase 1's latest apply), recorded by the rollback, when
        there is one; a rerun then inserts the same events as that run. Also in check mode.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
  - agency.pgmigrate.throttle
"""

EXAMPLES = r"""
- name: Plan the linkage and split it into chunks
  agency.pgmigrate.pgmigrate_backfill:
    action: plan
    plan_file: migrations/ht036/phase3/deploy/010_plan.sql
    setup_files:
      - migrations/ht036/phase3/deploy/005_linkage_rule.sql
      - migrations/ht036/phase3/deploy/007_transition_sync.sql
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: plan

- name: Link each chunk in short batches
  agency.pgmigrate.pgmigrate_backfill:
    action: run
    batch_file: migrations/ht036/phase3/deploy/020_link_batch.sql
    lo: "{{ item.lo }}"
    hi: "{{ item.hi }}"
    rows: "{{ item.rows }}"
    target_batch_ms: 25
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  loop: "{{ plan.chunks }}"
"""

RETURN = r"""
chunks:
  description: >-
    C(plan), C(bounds) - the chunks, each with C(number), C(lo), C(hi), C(rows) and C(rows_through).
  returned: action is plan or bounds
  type: list
  elements: dict
  sample: [{number: 1, lo: 0, hi: 1834, rows: 100012, rows_through: 100012}]
total:
  description: C(plan), C(bounds) - the plan's rows.
  returned: action is plan or bounds
  type: int
stats:
  description: >-
    C(plan), C(bounds) - how the plan resolved names (planned, ambiguous, chosen by installation or
    oldest listing, linked).
  returned: action is plan or bounds
  type: dict
events_since:
  description: The start of the integration-event window, fixed once for the run.
  returned: action is plan or bounds
  type: str
lock_retries:
  description: Statements retried after a lock timeout or deadlock.
  returned: success
  type: int
rows:
  description: C(run) - overrides linked.
  returned: action is run
  type: int
batches:
  description: C(run) - batches committed.
  returned: action is run
  type: int
batches_cut:
  description: C(run) - batches cut at I(target_batch_ms), rolled back and retried smaller.
  returned: action is run
  type: int
batches_cancelled:
  description:
    - C(run) - batches cancelled by a cancel request (or by a statement timeout PostgreSQL delivered
      late, which reads as one), rolled back and run again.
    - More than three in a row fail the chunk, naming what to do.
  returned: action is run
  type: int
throttle:
  description: C(run), C(drain) - how long the throttle slowed down and paused the batches, and why.
  returned: action is run or drain
  type: dict
drain:
  description: >-
    C(drain) - entries C(applied), C(calls), entries C(left) (queued before the drain began and
    kept from it), the queue's C(depth) after it (entries queued since included),
    C(drained_since) (the server's clock when it began) and C(seconds).
  returned: action is drain
  type: dict
"""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    backoff_delays,
    connect,
    json_safe,
    render,
    run_transactional,
    split_statements,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain import queue_state
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_queue import drain as drain_queue
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_queue import drain_or_fail
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import (
    THROTTLE_ARG,
    BatchCut,
    BatchSizer,
    Throttle,
    run_capped,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import options as throttle_options

# The engine's own table the batches write; the application's come with the throttle option's
# tables (the migration's manifest, throttle.tables). The throttle counts the lock waiters on both.
THROTTLED_TABLES = ["migration_ledger.phase3_override_plan"]

STATS = ("planned", "ambiguous", "ambiguous_resolved_by_installation",
         "ambiguous_resolved_by_oldest_listing", "with_installation")


def run_plan(conn, plan_file: str, lock: dict, setup_files: list[str], since: str) -> int:
    """The setup files (rule and sync) as one short transaction in one round trip: the locks
    its triggers take on the application's tables go as it ends, not a round trip later, when
    the controller's COMMIT arrives. Then the plan in its own."""
    texts = [render(Path(path).read_text(encoding="utf-8"), {"events_since": since}) for path in setup_files]
    setup = "\n;\n".join(texts)
    retries = 0
    for sql in (setup, Path(plan_file).read_text(encoding="utf-8")):
        if sql:
            retries += run_transactional(conn, sql, lock)[1]
    return retries


def window_start(conn, window_days: int) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT (now() - make_interval(days => %s))::text", (window_days,))
        since = cur.fetchone()[0]
    conn.rollback()
    return since


def rolled_back_window(conn) -> str | None:
    """The event window of a phase-3 run rolled back within this migration, or None."""
    with conn.cursor() as cur:
        cur.execute(f"""
            SELECT h.details ->> 'events_since'
              FROM {LEDGER_SCHEMA}.history h
             WHERE h.phase = '3' AND h.direction = 'rollback' AND h.status = 'succeeded'
               AND h.details ? 'events_since'
               AND h.id = (SELECT max(id) FROM {LEDGER_SCHEMA}.history WHERE phase = '3' AND status = 'succeeded')
               AND h.finished_at > (SELECT max(finished_at) FROM {LEDGER_SCHEMA}.history
                                     WHERE phase = '1' AND direction = 'apply' AND status = 'succeeded')""")
        row = cur.fetchone()
    conn.rollback()
    return (row[0] if row else None) or None


def bounds(conn, plan: str, chunk_rows: int, window_days: int) -> dict:
    """Chunks of about chunk_rows plan rows, as ranges of heap pages [lo, hi)."""
    with conn.cursor() as cur:
        cur.execute(f"""
            SELECT (planned_ctid::text::point)[0]::bigint AS page,
                   count(*),
                   count(*) FILTER (WHERE candidates > 1),
                   count(*) FILTER (WHERE chosen_by = 'installed'),
                   count(*) FILTER (WHERE chosen_by = 'oldest_listing'),
                   count(*) FILTER (WHERE installation_id IS NOT NULL)
              FROM {plan}
             GROUP BY 1 ORDER BY 1""")
        pages = cur.fetchall()
    conn.rollback()
    since = window_start(conn, window_days)
    stats = dict.fromkeys(STATS, 0)
    chunks: list[dict] = []
    current: dict | None = None
    for page, *counts in pages:
        for key, value in zip(STATS, counts, strict=True):
            stats[key] += value
        if current is None or current["rows"] >= chunk_rows:
            current = {"lo": page, "hi": page + 1, "rows": 0}
            chunks.append(current)
        current["hi"] = page + 1
        current["rows"] += counts[0]
    done = 0
    for number, chunk in enumerate(chunks, 1):
        done += chunk["rows"]
        chunk.update(number=number, rows_through=done)
    return {"stats": stats, "chunks": chunks, "total": stats["planned"], "events_since": since}


# The batch file's :'lo' and :'hi', as the prepared statement's parameters.
BOUND = re.compile(r":'(lo|hi)'")


def prepare_batch(conn, batch_file: str) -> None:
    """Prepare the batch statement once per session: every batch then skips parsing and
    planning. JIT compilation, worth it for long queries, only slows short batches down."""
    with open(batch_file, encoding="utf-8") as handle:
        statements = split_statements(handle.read())
    if len(statements) != 1:
        raise MigrationError(f"{batch_file} must hold exactly one statement, not {len(statements)}")
    statement = BOUND.sub(lambda m: "$1" if m.group(1) == "lo" else "$2", statements[0])
    with conn.cursor() as cur:
        cur.execute("SET jit = off")
        cur.execute(f"PREPARE pgmigrate_link_batch(text, text) AS {statement}")
    conn.commit()


def link_range(conn, p: dict, lock: dict, lo: int, hi: int, per_page: float, stop: threading.Event,
               throttle: Throttle) -> dict:
    """One session's share of a chunk: pages lo to hi (excluded), batch by batch, each batch
    after the throttle's word (pgmigrate_throttle) and under a statement_timeout of its target."""
    prepare_batch(conn, p["batch_file"])
    # Batches are ranges of pages; sizes are kept in rows for the operator's settings.
    min_pages = max(1, int(p["min_batch_size"] / per_page))
    sizer = BatchSizer(max(1, round(p["batch_size"] / per_page)), min_pages,
                       max(min_pages, int(p["max_batch_size"] / per_page)), p["target_batch_ms"])
    done = {"rows": 0, "restated": 0, "batches": 0, "lock_retries": 0, "durations": [],
            "skipped": 0, "passes": 1, "cancelled": 0}

    def batch(first: int, end: int) -> tuple[int, float, int] | None:
        """One batch, or None when it reached its target and was rolled back."""
        share = throttle.wait()
        t0 = time.monotonic()
        try:
            (rows, fixed, skipped), tries = link_batch(conn, lock, first, end, sizer.cap_ms(), done)
        except BatchCut:
            sizer.was_cut()  # rolled back: the same pages again, in a quarter of the size
            return None
        elapsed = max(time.monotonic() - t0, 1e-4)
        done["durations"].append(elapsed)
        done["rows"] += rows
        done["restated"] += fixed
        done["batches"] += 1
        done["lock_retries"] += tries
        sizer.done(elapsed, bool(tries), share)
        return skipped, elapsed, tries

    # Pages holding rows a batch skipped (another transaction held their lock): linked again
    # in later passes, after a pause with backoff, as a lock timeout is retried.
    revisit: list[tuple[int, int]] = []
    page = lo
    while page < hi and not stop.is_set():
        end = min(hi, page + sizer.size)
        result = batch(page, end)
        if result is None:
            continue
        if result[0]:
            done["skipped"] += result[0]
            revisit.append((page, end))
        page = end
    delays = backoff_delays(lock["backoff_initial_ms"], lock["backoff_max_ms"])
    while revisit and not stop.is_set():
        if done["passes"] > lock["lock_attempts"]:
            raise MigrationError(
                f"{len(revisit)} page range(s) still hold overrides locked by another "
                f"transaction after {done['passes']} passes: a long transaction holds them; find it "
                "in pg_stat_activity (the sessions holding locks on the table the batches write), or raise "
                "migration_lock_attempts")
        time.sleep(next(delays))
        done["passes"] += 1
        revisit = [r for r in revisit if revisit_pages(batch, *r)]
    done.update(cut=sizer.cut, over_target=sizer.over_target)
    return done


def revisit_pages(batch, first: int, end: int) -> bool:
    """A later pass over pages that held skipped rows: True while some are still skipped. A
    revisited range may be larger than the batch target allows: cut, it is walked in pieces."""
    step = end - first
    page, skipped = first, False
    while page < end:
        result = batch(page, min(end, page + step))
        if result is None:
            step = max(1, step // 4)
            continue
        skipped = skipped or bool(result[0])
        page = min(end, page + step)
    return skipped


def link_batch(conn, lock: dict, page: int, end: int, cap_ms: float | None,
               tally: dict | None = None) -> tuple[tuple[int, ...], int]:
    """One batch: the plan's pages [page, end), one statement in one round trip, capped at
    cap_ms (pgmigrate_throttle.run_capped; cancelled batches run again are counted in tally)."""
    row, tries = run_capped(conn, "EXECUTE pgmigrate_link_batch(%s, %s)", (f"({page},0)", f"({end},0)"),
                            lock, cap_ms, tally)
    return tuple(row.values()), tries


def run_chunk(p: dict, lock: dict) -> dict:
    """Link a chunk with p['workers'] sessions, each on its own contiguous share of the pages:
    they never touch the same override, so they never wait for each other."""
    lo, hi = p["lo"], p["hi"]
    per_page = max(1.0, (p["rows"] or 0) / max(1, hi - lo))
    workers = max(1, min(p["workers"], hi - lo))
    edges = [lo + (hi - lo) * n // workers for n in range(workers + 1)]
    stop = threading.Event()
    throttle = Throttle(p, p["throttle"], THROTTLED_TABLES, "the phase 3 backfill")

    def share(n: int) -> dict:
        conn = connect(p, "pgmigrate-backfill")
        try:
            return link_range(conn, p, lock, edges[n], edges[n + 1], per_page, stop, throttle)
        except BaseException:
            stop.set()  # the others finish their batch and stop: the chunk fails as a whole
            raise
        finally:
            conn.close()

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [f.result() for f in [pool.submit(share, n) for n in range(workers)]]
    finally:
        throttled = throttle.summary()
        throttle.close()
    seconds = time.monotonic() - started
    durations = sorted(d for r in results for d in r["durations"])
    linked = sum(r["rows"] for r in results)
    return {"rows": linked, "restated": sum(r["restated"] for r in results),
            "batches": sum(r["batches"] for r in results),
            "lock_retries": sum(r["lock_retries"] for r in results),
            "batches_cut": sum(r["cut"] for r in results),
            "batches_over_target": sum(r["over_target"] for r in results),
            "batches_cancelled": sum(r["cancelled"] for r in results),
            "skipped": sum(r["skipped"] for r in results),
            "passes": max(r["passes"] for r in results),
            "throttle": throttled, "workers": workers, "seconds": round(seconds, 3),
            "batch_ms_p50": round(1000 * durations[len(durations) // 2], 1) if durations else 0,
            "slowest_batch_ms": round(1000 * durations[-1], 1) if durations else 0,
            "rows_per_second": int(linked / seconds) if seconds > 0 else linked}


def run_drain(module, p: dict, lock: dict) -> dict:
    """The drain action: the queue applied (or, in check mode, its depth read)."""
    try:
        conn = connect(p, "pgmigrate-drain")
        try:
            if module.check_mode:
                depth = queue_state(conn).get("depth", 0)
                return {"changed": depth > 0, "drain": {"depth": depth},
                        "msg": f"would drain the transition's queue ({depth} entries)"}
            fn = drain_queue if p["drain_may_leave"] else drain_or_fail
            result = fn(conn, p, lock, p["throttle"], what="the transition's queue")
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # noqa: BLE001 - psycopg2.Error and friends: name the step
        module.fail_json(msg=f"draining the transition's queue failed: {str(exc).strip()}")
    throttled = result.pop("throttle", {})
    return {"changed": result["applied"] > 0, "drain": json_safe(result), "throttle": throttled,
            "msg": f"drained the transition's queue: {result['applied']} entries applied in "
                   f"{result['calls']} calls ({result['seconds']} s); {result['left']} left, depth now "
                   f"{result['depth']}"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["plan", "bounds", "run", "drain"]),
            plan_table=dict(type="str", default="migration_ledger.phase3_override_plan"),
            plan_file=dict(type="path"),
            setup_files=dict(type="list", elements="path", default=[]),
            batch_file=dict(type="path"),
            chunk_rows=dict(type="int", default=100000),
            event_window_days=dict(type="int", default=7),
            lo=dict(type="int"),
            hi=dict(type="int"),
            rows=dict(type="int"),
            batch_size=dict(type="int", default=1000),
            min_batch_size=dict(type="int", default=100),
            max_batch_size=dict(type="int", default=20000),
            target_batch_ms=dict(type="int", default=25),
            workers=dict(type="int", default=2),
            reuse_rolled_back_window=dict(type="bool", default=False),
            drain_may_leave=dict(type="bool", default=False),
            throttle=THROTTLE_ARG,
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        required_if=[("action", "plan", ["plan_file"]),
                     ("action", "run", ["batch_file", "lo", "hi"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        throttle_options(p["throttle"])  # a bad option is refused before anything runs
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode and p["action"] == "plan":
        window = {}
        if p["reuse_rolled_back_window"]:
            try:
                conn = connect(p, "pgmigrate-backfill")
                try:
                    since = rolled_back_window(conn)
                finally:
                    conn.close()
            except MigrationError as exc:
                module.fail_json(msg=str(exc))
            window = {"events_since": since} if since else {}
        module.exit_json(changed=True, msg=f"would run {p['plan_file']} and split the plan into chunks",
                         chunks=[], total=0, stats={}, **window)
    if module.check_mode and p["action"] == "run":
        module.exit_json(changed=True, msg=f"would link the overrides planned on pages {p['lo']} to {p['hi']}")
    lock = {k: p[k] for k in LOCK_ARGS}
    if p["action"] == "drain":
        module.exit_json(**run_drain(module, p, lock))
    try:
        if p["action"] == "run":
            result = run_chunk(p, lock)
            module.exit_json(changed=result["rows"] > 0, **result)
        conn = connect(p, "pgmigrate-backfill")
        try:
            # The window first: the sync (a setup file) gives the events of the same window.
            since = (rolled_back_window(conn) if p["reuse_rolled_back_window"] else None) \
                or window_start(conn, p["event_window_days"])
            retries = (run_plan(conn, p["plan_file"], lock, p["setup_files"], since)
                       if p["action"] == "plan" else 0)
            result = bounds(conn, p["plan_table"], p["chunk_rows"], p["event_window_days"])
            result["events_since"] = since
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # noqa: BLE001 - psycopg2.Error and friends: name the step
        module.fail_json(msg=f"phase 3 backfill ({p['action']}) failed: {str(exc).strip()}")
    module.exit_json(changed=p["action"] == "plan", lock_retries=retries, **json_safe(result))


if __name__ == "__main__":
    main()
