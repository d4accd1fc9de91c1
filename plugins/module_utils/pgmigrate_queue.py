# The transition's queue, from the controller (docs/transition.md): what today's application's
# writes derive in other rows (an installation's event and relinked overrides, a listing's
# relinked overrides) is queued in the write's own transaction
# (migration_ledger.transition_queue) and applied by migration_ledger.transition_drain().
# drain() calls it in short transactions, each one statement in one round trip committed as it
# ends (pgmigrate_throttle.run_capped: no lock held across a round trip, a batch cut short at
# its target is rolled back and retried smaller), under the throttle, until the queue holds
# nothing queued before the drain began. The migration drains after phase 3's backfill, before
# phase 6's validator, before the cutover and before a rollback.
from __future__ import annotations

import time
from typing import Any

from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    LEDGER_SCHEMA,
    MigrationError,
    backoff_delays,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain import queue_present, queue_state
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_throttle import (
    BatchCut,
    BatchSizer,
    Throttle,
    end_batches,
    run_capped,
)

# The engine's own table the drain writes; the application's come with the throttle option's
# tables (the migration's manifest, throttle.tables). The throttle counts the lock waiters on both.
THROTTLED_TABLES = [f"{LEDGER_SCHEMA}.transition_queue"]
# Entries per call: the first call's, the bounds a call's size adapts within, and its target.
DRAIN_DEFAULTS: dict[str, int] = {"batch_size": 200, "min_batch_size": 10, "max_batch_size": 5000,
                                  "target_batch_ms": 50}


def _left_before(conn, since: str) -> int:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {LEDGER_SCHEMA}.transition_queue WHERE enqueued_at < %s::timestamptz",
                    (since,))
        return int(cur.fetchone()[0])


def drain(conn, params: dict, lock: dict, throttle_opts: dict | None = None,
          sizes: dict | None = None, what: str = "the transition's queue") -> dict[str, Any]:
    """Apply every entry queued before this call began, in short transactions under the throttle
    (`params` the module's connection parameters, for the throttle's own session). Entries the
    drain had to leave (their client's advisory lock, or one of its overrides, held by an
    application transaction) are tried again with backoff, up to lock['lock_attempts'] passes;
    then the result says how many are left (`left`) and the caller decides. Returns applied,
    calls, left, depth (all entries, also those queued since), drained_since (the server's clock
    when it began: nothing queued before it is left when left is 0), seconds and throttle."""
    sizes = {**DRAIN_DEFAULTS, **(sizes or {})}
    result: dict[str, Any] = {"applied": 0, "calls": 0, "left": 0, "depth": 0, "drained_since": None,
                              "seconds": 0.0, "cut": 0, "cancelled": 0, "lock_retries": 0}
    conn.autocommit = True
    with conn.cursor() as cur:
        present = queue_present(cur)
    if not present:
        result["skipped"] = "no transition queue (phase 3 not applied, or the cutover done)"
        return result
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute("SELECT clock_timestamp()::text")
        since = cur.fetchone()[0]
    result["drained_since"] = since
    sizer = BatchSizer(sizes["batch_size"], sizes["min_batch_size"], sizes["max_batch_size"],
                       sizes["target_batch_ms"])
    throttle = Throttle(params, throttle_opts, THROTTLED_TABLES, what)
    delays = backoff_delays(lock["backoff_initial_ms"], lock["backoff_max_ms"])
    passes = 0
    try:
        while True:
            share = throttle.wait()
            t0 = time.monotonic()
            try:
                row, retries = run_capped(conn, f"SELECT {LEDGER_SCHEMA}.transition_drain(%s) AS applied",
                                          (sizer.size,), lock, sizer.cap_ms(), result)
            except BatchCut:
                sizer.was_cut()
                continue
            result["calls"] += 1
            result["lock_retries"] += retries
            applied = int(row["applied"] or 0)
            result["applied"] += applied
            sizer.done(time.monotonic() - t0, bool(retries), share)
            left = _left_before(conn, since)
            if not left:
                break
            if applied < sizer.size:
                # What is left was skipped: an application transaction holds it. Try again later.
                passes += 1
                if passes > lock["lock_attempts"]:
                    result["left"] = left
                    break
                time.sleep(next(delays))
    finally:
        result["throttle"] = throttle.summary()
        throttle.close()
        end_batches(conn)
    result["depth"] = queue_state(conn).get("depth", 0)
    result["cut"] = sizer.cut
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def drain_or_fail(conn, params: dict, lock: dict, throttle_opts: dict | None = None,
                  sizes: dict | None = None, what: str = "the transition's queue") -> dict[str, Any]:
    """drain(), and a MigrationError naming the cause when entries queued before it are left."""
    result = drain(conn, params, lock, throttle_opts, sizes, what)
    if result["left"]:
        raise MigrationError(
            f"{result['left']} entr{'y' if result['left'] == 1 else 'ies'} of the transition's queue "
            f"could not be applied after {lock['lock_attempts']} passes: an application transaction "
            "holds their client's advisory lock or one of its overrides. Find it in pg_stat_activity "
            "(and pg_locks, locktype advisory), let it end, then run again; or raise "
            "migration_lock_attempts. Nothing was lost: the entries stay queued")
    return result
