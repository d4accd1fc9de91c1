"""A sampler of lock waits for the benchmark (the application's traffic is tools/bench/openloop.py:
today's application as pgbench scripts, open loop).

Every sample_interval_s, pg_locks x pg_stat_activity: who waited, in which lock mode on what, for
how long, behind whom; from start() to stop(), in its own process.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

import psycopg2

# The application_name of the application's sessions (openloop.py sets it for pgbench).
APP_NAME = "bench-app"
SAMPLER_NAME = "bench-sampler"


def connect(db: dict[str, Any], application_name: str) -> Any:
    return psycopg2.connect(
        host=db["host"], port=db["port"], user=db["user"], password=db["password"],
        dbname=db["dbname"], connect_timeout=10, application_name=application_name,
    )


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
class LockSampler:
    """A running lock sampler; stop() returns what it recorded."""

    db: dict[str, Any]
    sample_interval_s: float = 0.05
    _stop: Any = None
    _proc: Any = None
    _queue: Any = None

    def start(self) -> LockSampler:
        ctx = mp.get_context("fork")
        self._stop = ctx.Event()
        self._queue = ctx.Queue()
        self._proc = ctx.Process(target=_sampler, daemon=True,
                                 args=(self.db, self.sample_interval_s, self._stop, self._queue))
        self._proc.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        samples = self._queue.get(timeout=120)
        self._proc.join(timeout=30)
        return samples
