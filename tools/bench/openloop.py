"""Open-loop application traffic for the benchmark: today's application as pgbench scripts
(tools/bench/pgbench/, README there), at a fixed rate, latency from each transaction's scheduled
start.

pgbench with --rate schedules transactions on a Poisson clock whatever the database does, so a
stall shows as the latency of every transaction scheduled during it (a closed loop, where each
connection waits for its last transaction, would send nothing meanwhile and hide it). With -l,
its per-transaction log gives, per transaction: the script, the completion time, its time and
its schedule lag. Under --rate, pgbench counts that time from the scheduled start already
(processXactStats: latency = now - txn_scheduled; the lag is the part of it spent waiting to
start): latency from the scheduled start = time, scheduled start = completion - time.

Two streams: the old application (read, flip, install, new override), from start() to stop(), and
reads of the dashboard views, started as soon as phase 5 has made them (polled outside the
measured traffic).

capacity() measures what the same mix achieves unthrottled (pgbench without --rate) on a
database: the bench runs the traffic at a stated share of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "pgbench"
APP_NAME = "bench-app"
# The old application's mix (pgbench -f FILE@WEIGHT), in the order pgbench numbers the scripts.
APP_MIX = (("read", "old_app_read.sql", 40), ("flip", "old_app_flip.sql", 30),
           ("install", "old_app_install.sql", 20), ("new_override", "old_app_new_override.sql", 10))
# The second mix of the capacity measurements: one request reading, flipping and installing, so
# every transaction pays the sync of a flip and of an installation.
READ_FLIP_INSTALL_MIX = (("read_flip_install", "old_app_read_flip_install.sql", 1),)
DASHBOARD = ("dashboard", "dashboard_read.sql")
VIEWS_POLL_S = 0.25
TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)

Transaction = tuple[float, float, str, "str | None"]


def pg_env(db: dict[str, Any], app_name: str = APP_NAME) -> dict[str, str]:
    return {**os.environ, "PGHOST": db["host"], "PGPORT": str(db["port"]), "PGUSER": db["user"],
            "PGPASSWORD": db["password"], "PGDATABASE": db["dbname"], "PGAPPNAME": app_name}


def app_first() -> None:
    # The load generator runs a little ahead in the scheduler (when allowed: root), so what is
    # measured is the database's answer, not pgbench waiting for a CPU behind ansible-playbook.
    with contextlib.suppress(OSError):
        os.nice(-5)


def pgbench_args(pgbench: str, scripts: list[tuple[str, int]], clients: int, scale: int) -> list[str]:
    threads = max(1, min(2, clients))
    # Prepared statements, as an application's driver or pool would: no planning per call.
    args = [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads), "-D", f"scale={scale}"]
    for name, weight in scripts:
        args += ["-f", f"{SCRIPTS / name}@{weight}"]
    return args


def capacity(pgbench: str, db: dict[str, Any], scale: int, clients: int, seconds: float,
             mix: tuple[tuple[str, str, int], ...] = APP_MIX) -> dict[str, Any]:
    """A mix of the old application (by default its usual one), unthrottled (no --rate), for
    `seconds`: transactions/s."""
    args = [*pgbench_args(pgbench, [(f, w) for _, f, w in mix], clients, scale), "-T", str(max(1, round(seconds)))]
    result = subprocess.run(args, env=pg_env(db), capture_output=True, text=True, check=False,
                            preexec_fn=app_first, timeout=seconds + 120)
    found = TPS.search(result.stdout)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"pgbench capacity run failed ({result.returncode}): {result.stderr[-800:]}")
    return {"tps": float(found.group(1)), "clients": clients, "seconds": seconds}


class Stream:
    """One pgbench process at a fixed rate, logging every transaction."""

    def __init__(self, pgbench: str, db: dict[str, Any], scripts: list[tuple[str, str, int]], rate: float,
                 clients: int, scale: int, workdir: Path, name: str, progress: bool = False) -> None:
        self.names = [op for op, _, _ in scripts]
        self.prefix = workdir / f"pgbench-{name}"
        self.name = name
        self.rate = rate
        args = [*pgbench_args(pgbench, [(f, w) for _, f, w in scripts], clients, scale),
                "-R", f"{rate:.3f}", "-T", "86400", "-l", f"--log-prefix={self.prefix}"]
        if progress:
            # A line a second on stderr (tools/bench/appsignal.py reads it: the application's signal).
            args += ["-P", "1"]
        self.stderr = (workdir / f"pgbench-{name}.err").open("w")
        self.proc = subprocess.Popen(args, env=pg_env(db), stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     preexec_fn=app_first, cwd=workdir)
        self.started = time.time()

    def stop(self) -> tuple[list[Transaction], list[str]]:
        """Stop pgbench (SIGINT; the last lines of its log buffer may be lost: they fall in the
        bench's tail, after the measured window). (transactions, problems)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        problems = [line.strip() for line in Path(self.stderr.name).read_text().splitlines()
                    if "abort" in line or "error" in line.lower()]
        transactions: list[Transaction] = []
        for log in sorted(self.prefix.parent.glob(f"{self.prefix.name}.*")):
            transactions += self._parse(log)
        return transactions, problems

    def _parse(self, log: Path) -> list[Transaction]:
        out: list[Transaction] = []
        with log.open(errors="replace") as handle:
            for line in handle:
                parts = line.split()
                # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
                if len(parts) < 6 or not parts[3].isdigit():
                    continue  # a line cut short when pgbench was stopped
                try:
                    end = int(parts[4]) + int(parts[5]) / 1e6
                    lag = int(parts[6]) if len(parts) > 6 else 0
                except ValueError:
                    continue
                script = int(parts[3])
                op = self.names[script] if script < len(self.names) else f"script{script}"
                if parts[2] in ("failed", "serialization", "deadlock", "other"):
                    # pgbench >= 15: a failed transaction; its time is unknown, its lag known.
                    out.append((end - lag / 1e6, lag / 1000.0, op, parts[2]))
                    continue
                if parts[2] == "skipped":
                    continue
                # Under --rate, time runs from the scheduled start: the lag is inside it.
                elapsed = int(parts[2])
                out.append((end - elapsed / 1e6, elapsed / 1000.0, op, None))
        return out


class OpenLoop:
    """The old application at `rate` transactions/s, and once phase 5 has made the views, the
    dashboard stream at dashboard_share x rate. stop() returns every transaction as (scheduled
    start, latency from it in ms, op, error or None), sorted, and the problems pgbench reported
    (an aborted client stops sending: each is counted as a failure)."""

    def __init__(self, pgbench: str, db: dict[str, Any], rate: float, scale: int, workdir: Path,
                 clients: int = 8, dashboard_share: float = 0.10, progress: bool = False) -> None:
        self.args = (pgbench, db, scale, workdir, clients)
        self.progress = progress
        self.rate = rate
        self.dashboard_share = dashboard_share
        self.streams: list[Stream] = []
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None
        self.dashboard_started: float | None = None

    def start(self) -> OpenLoop:
        pgbench, db, scale, workdir, clients = self.args
        self.streams.append(Stream(pgbench, db, list(APP_MIX), self.rate, clients, scale, workdir, "app",
                                   progress=self.progress))
        if self.dashboard_share > 0:
            self.watcher = threading.Thread(target=self._watch, daemon=True)
            self.watcher.start()
        return self

    def _views(self, conn: Any) -> bool:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('unified_client_dashboard') IS NOT NULL "
                        "AND to_regclass('module_integration_view') IS NOT NULL")
            return bool(cur.fetchone()[0])

    def _watch(self) -> None:
        pgbench, db, scale, workdir, clients = self.args
        conn = psycopg2.connect(host=db["host"], port=db["port"], user=db["user"], password=db["password"],
                                dbname=db["dbname"], application_name="bench-views-watch", connect_timeout=10)
        conn.autocommit = True
        try:
            while not self.stopping.is_set():
                if self._views(conn):
                    break
                self.stopping.wait(VIEWS_POLL_S)
            else:
                return
        finally:
            conn.close()
        self.dashboard_started = time.time()
        self.streams.append(Stream(pgbench, db, [(DASHBOARD[0], DASHBOARD[1], 1)], self.rate * self.dashboard_share,
                                   max(2, clients // 2), scale, workdir, "dashboard"))

    def stop(self) -> tuple[list[Transaction], list[str]]:
        self.stopping.set()
        if self.watcher is not None:
            self.watcher.join(timeout=30)
        transactions: list[Transaction] = []
        problems: list[str] = []
        for stream in self.streams:
            found, issues = stream.stop()
            transactions += found
            problems += [f"{stream.name}: {p}" for p in issues]
        return sorted(transactions), problems
