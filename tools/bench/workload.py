"""Application-like traffic for the benchmark, and a sampler of lock waits.

Workload: several connections (one process each, so that one client's Python never delays
another's measurement), each running short transactions in a loop with a pause between them:

    read      SELECT a client's overrides                          (client_app_overrides)
    flip      UPDATE one override: enabled = NOT enabled           (a row lock on the override)
    install   INSERT a module installation                         (module_installations)
    dashboard SELECT a client's row of unified_client_dashboard and its module_integration_view
              rows, once phase 5 has created the views (a read of the client's overrides before)

The application follows the schema as the migration changes it, as a deployed application
would once each piece exists: after phase 2 a flip keeps activation_status in step with enabled
on overrides that are already linked (phase 3 links the others), and once integration_events
exists an installation records its module_installed event in the same transaction. Otherwise
phase 6's validator would find rows that the application, not the migration, left
inconsistent. The schema is polled outside the measured transactions.

Ids come from files/sql/baseline/generate.sql's formulas (md5-derived uuids), so the workers
need no list of ids: client i (1..scale) has overrides j = 0..9.

Every transaction's start (wall clock), latency and error are recorded, from start() to
stop(); so is every sample of the lock sampler (pg_locks x pg_stat_activity, every
sample_interval_s): who waited, in which lock mode on what, for how long, behind whom.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg2

APP_NAME = "bench-app"
SAMPLER_NAME = "bench-sampler"
MODULES = 40
OPS = (("read", 0.40), ("flip", 0.30), ("install", 0.15), ("dashboard", 0.15))
SCHEMA_POLL_S = 0.25


def md5_uuid(text: str) -> str:
    """PostgreSQL's md5(text)::uuid, in Python."""
    return str(uuid.UUID(hashlib.md5(text.encode()).hexdigest()))  # noqa: S324 - ids, not security


def connect(db: dict[str, Any], application_name: str) -> Any:
    conn = psycopg2.connect(
        host=db["host"], port=db["port"], user=db["user"], password=db["password"],
        dbname=db["dbname"], connect_timeout=10, application_name=application_name,
    )
    conn.autocommit = False
    return conn


@dataclass
class Schema:
    """What the application uses of the schema, as the migration creates it."""

    linkage_columns: bool = False
    events_table: bool = False
    views: bool = False
    checked_at: float = 0.0

    def refresh(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT EXISTS (SELECT 1 FROM pg_attribute
                                   WHERE attrelid = to_regclass('client_app_overrides')
                                     AND attname = 'activation_status' AND NOT attisdropped),
                          to_regclass('integration_events') IS NOT NULL,
                          to_regclass('module_integration_view') IS NOT NULL
                      AND to_regclass('unified_client_dashboard') IS NOT NULL""")
            self.linkage_columns, self.events_table, self.views = cur.fetchone()
        conn.commit()
        self.checked_at = time.monotonic()


FLIP_PLAIN = "UPDATE client_app_overrides SET enabled = NOT enabled, updated_at = now() WHERE id = %s"
# enabled on the right-hand side is the value before the flip.
FLIP_LINKED = """
UPDATE client_app_overrides
   SET enabled = NOT enabled, updated_at = now(),
       activation_status = CASE WHEN marketplace_module_id IS NULL THEN activation_status
                                WHEN enabled THEN 'inactive' ELSE 'active' END
 WHERE id = %s"""
INSTALL = """
INSERT INTO module_installations (module_id, tenant_id, installed_at, status)
VALUES (%s, %s, now(), 'installed') RETURNING id, installed_at"""
EVENT = """
INSERT INTO integration_events (event_type, event_source, event_payload, correlation_id)
VALUES ('module_installed', 'modules',
        jsonb_build_object('installation_id', %(id)s::uuid, 'module_id', %(module)s::uuid,
                           'tenant_id', %(tenant)s::uuid, 'installed_at', %(at)s::timestamptz,
                           'status', 'installed'),
        %(id)s::uuid)"""


def transaction(cur: Any, op: str, schema: Schema, rng: random.Random, scale: int) -> str:
    """Run one transaction's statements (the caller commits). Returns the op really run."""
    i = rng.randint(1, scale)
    client = md5_uuid(f"client-{i}")
    if op == "dashboard" and not schema.views:
        op = "read"
    if op == "read":
        cur.execute("SELECT * FROM client_app_overrides WHERE client_id = %s", (client,))
        cur.fetchall()
    elif op == "flip":
        override = md5_uuid(f"override-{i}-{rng.randint(0, 9)}")
        cur.execute(FLIP_LINKED if schema.linkage_columns else FLIP_PLAIN, (override,))
    elif op == "install":
        module = md5_uuid(f"module-{rng.randrange(MODULES)}")
        cur.execute(INSTALL, (module, client))
        installation, at = cur.fetchone()
        if schema.events_table:
            cur.execute(EVENT, {"id": installation, "module": module, "tenant": client, "at": at})
    else:
        cur.execute("SELECT * FROM unified_client_dashboard WHERE client_id = %s", (client,))
        cur.fetchall()
        cur.execute("SELECT * FROM module_integration_view WHERE client_id = %s", (client,))
        cur.fetchall()
    return op


def _worker(db: dict[str, Any], scale: int, think_s: float, seed: int, stop: Any, out: Any) -> None:
    # In production the application, the database and the migration's controller run on
    # different machines; here they share a few CPUs. The application's client processes run a
    # little ahead in the scheduler (when allowed: root), so that what is measured is the
    # database's answer, not the load generator waiting for a CPU behind ansible-playbook. The
    # database server and the migration run at normal priority.
    with contextlib.suppress(OSError):
        os.nice(-5)
    rng = random.Random(seed)
    names = [name for name, _ in OPS]
    weights = [weight for _, weight in OPS]
    records: list[tuple[float, float, str, str | None]] = []
    conn = connect(db, APP_NAME)
    schema = Schema()
    schema.refresh(conn)
    try:
        while not stop.is_set():
            if time.monotonic() - schema.checked_at > SCHEMA_POLL_S:
                schema.refresh(conn)
            op = rng.choices(names, weights)[0]
            wall = time.time()
            started = time.perf_counter()
            error = None
            try:
                with conn.cursor() as cur:
                    op = transaction(cur, op, schema, rng, scale)
                conn.commit()
            except psycopg2.Error as exc:
                error = f"{exc.pgcode}: {str(exc).strip().splitlines()[0]}"
                conn.rollback()
            records.append((wall, (time.perf_counter() - started) * 1000.0, op, error))
            time.sleep(think_s * rng.uniform(0.5, 1.5))
    finally:
        conn.close()
        out.put(records)


LOCK_SAMPLE = """
SELECT a.pid, a.application_name, l.locktype, l.mode,
       coalesce(l.relation::regclass::text, l.locktype) AS target,
       extract(epoch FROM l.waitstart) AS wait_started,
       extract(epoch FROM clock_timestamp() - l.waitstart) * 1000 AS waited_ms,
       (SELECT string_agg(DISTINCT b.application_name, ',') FROM pg_stat_activity b
         WHERE b.pid = ANY (pg_blocking_pids(a.pid))) AS blocked_by,
       left(a.query, 120) AS query
  FROM pg_locks l
  JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE NOT l.granted AND a.datname = current_database() AND a.pid <> pg_backend_pid()"""


def _sampler(db: dict[str, Any], interval_s: float, stop: Any, out: Any) -> None:
    samples: list[dict[str, Any]] = []
    conn = connect(db, SAMPLER_NAME)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '1s'")
            while not stop.is_set():
                at = time.time()
                try:
                    cur.execute(LOCK_SAMPLE)
                    cols = [c.name for c in cur.description]
                    for row in cur.fetchall():
                        samples.append({"at": at, **dict(zip(cols, row, strict=True))})
                except psycopg2.Error:
                    pass
                stop.wait(interval_s)
    finally:
        conn.close()
        out.put(samples)


@dataclass
class Traffic:
    """A running workload and lock sampler; stop() returns what they recorded."""

    db: dict[str, Any]
    workers: int = 4
    think_ms: float = 10.0
    scale: int = 100000
    sample_interval_s: float = 0.05
    seed: int = 1
    _stop: Any = None
    _procs: list[Any] = field(default_factory=list)
    _queues: list[Any] = field(default_factory=list)

    def start(self) -> Traffic:
        ctx = mp.get_context("fork")
        self._stop = ctx.Event()
        for n in range(self.workers):
            queue = ctx.Queue()
            proc = ctx.Process(target=_worker, daemon=True, args=(
                self.db, self.scale, self.think_ms / 1000.0, self.seed * 1000 + n, self._stop, queue))
            proc.start()
            self._procs.append(proc)
            self._queues.append(queue)
        queue = ctx.Queue()
        proc = ctx.Process(target=_sampler, daemon=True, args=(
            self.db, self.sample_interval_s, self._stop, queue))
        proc.start()
        self._procs.append(proc)
        self._queues.append(queue)
        return self

    def stop(self) -> tuple[list[tuple[float, float, str, str | None]], list[dict[str, Any]]]:
        """Stop every process; (transactions, lock samples). Transactions are tuples of
        (wall-clock start, latency ms, op, error or None), sorted by start."""
        self._stop.set()
        results = [queue.get(timeout=120) for queue in self._queues]
        for proc in self._procs:
            proc.join(timeout=30)
        transactions = sorted(t for records in results[:-1] for t in records)
        return transactions, results[-1]
