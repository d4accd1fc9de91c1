"""Helpers for the transition's tests (issue 12, docs/transition.md): today's application as
pgbench, the independent check (tools/check_transition.sql), and what the sync leaves behind.

Today's application (tools/bench/pgbench/old_app_*.sql) reads a client's overrides, flips
`enabled`, inserts installations and inserts overrides; it never writes the new columns or
tables. pgbench runs it open loop (--rate), so it keeps coming whatever the migration does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import REPO_ROOT, connect, pgcluster

PGBENCH_DIR = REPO_ROOT / "tools" / "bench" / "pgbench"
CHECK_SQL = REPO_ROOT / "tools" / "check_transition.sql"
OLD_APP_MIX = (("old_app_read.sql", 40), ("old_app_flip.sql", 30), ("old_app_install.sql", 15),
               ("old_app_new_override.sql", 15))
SYNC_TRIGGERS = ("pgmigrate_transition_override", "pgmigrate_transition_installation",
                 "pgmigrate_transition_listing")


class OldApplication:
    """pgbench running today's application against `db` until stop(); scale = the seed's."""

    def __init__(self, db: dict[str, Any], scale: int, log_dir: Path, rate: int = 100,
                 clients: int = 4) -> None:
        cmd = [pgcluster.find_pg_bin("pgbench"), "-n", "-c", str(clients), "-j", "2",
               "-T", "3600", "--rate", str(rate), "-D", f"scale={scale}",
               "-h", str(db["host"]), "-p", str(db["port"]), "-U", db["user"]]
        for script, weight in OLD_APP_MIX:
            cmd += ["-f", f"{PGBENCH_DIR / script}@{weight}"]
        # -l: one line per transaction (pgbench prints no summary when it is interrupted)
        self.log_prefix = log_dir / f"old_app_{db['dbname']}"
        cmd += ["-l", "--log-prefix", str(self.log_prefix)]
        cmd.append(db["dbname"])
        env = {**os.environ, "PGPASSWORD": db["password"]}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=log_dir)
        self.output = ""

    def stop(self) -> dict[str, Any]:
        """Stop it and count what it did: transactions logged, and failures (a client that
        hit an SQL error aborts and says so on stderr; a failed transaction is logged as such)."""
        exited_early = self.proc.poll() is not None
        if not exited_early:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a busy pgbench may not stop on SIGINT
                self.proc.terminate()
        out, err = self.proc.communicate(timeout=60)
        self.output = out + err
        processed = failed = 0
        for log in self.log_prefix.parent.glob(self.log_prefix.name + ".*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) < 3:
                    continue
                if fields[2] in ("failed", "serialization", "deadlock"):
                    failed += 1
                else:
                    processed += 1
        errors = [line for line in self.output.splitlines() if "aborted" in line or "ERROR" in line]
        if exited_early:
            errors.append(f"pgbench exited before it was stopped (rc {self.proc.returncode})")
        return {"processed": processed, "failed": failed + len(errors), "errors": errors}


def drain(db: dict[str, Any], timeout_s: float = 60) -> int:
    """Drain the transition's queue as the migration does (transition_drain in short
    transactions until it is empty) and fold the sync's log; returns the entries applied. What
    a write derives in other rows is consistent once drained (docs/transition.md)."""
    conn = connect(db)
    conn.autocommit = True
    applied = 0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regprocedure('migration_ledger.transition_drain(integer)') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            deadline = time.monotonic() + timeout_s
            while True:
                cur.execute("SELECT migration_ledger.transition_drain(1000)")
                done = cur.fetchone()[0]
                applied += done
                cur.execute("SELECT depth FROM migration_ledger.transition_queue_state()")
                if cur.fetchone()[0] == 0:
                    break
                assert time.monotonic() < deadline, "the transition's queue did not drain"
                if not done:
                    time.sleep(0.05)
            cur.execute("SELECT migration_ledger.transition_fold_sync_log(NULL, true)")
    finally:
        conn.close()
    return applied


def queue_depth(db: dict[str, Any]) -> int:
    """Entries in the transition's queue (0 without one)."""
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('migration_ledger.transition_queue') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT count(*) FROM migration_ledger.transition_queue")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def check_transition(db: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
    """tools/check_transition.sql: {check: (failures, examples)}."""
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(CHECK_SQL.read_text())
            rows = cur.fetchall()
        conn.rollback()
    finally:
        conn.close()
    return {name: (int(failures), examples) for name, failures, examples in rows}


def inconsistent(db: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
    """The checks of tools/check_transition.sql that failed ({} when consistent), once the
    transition's queue is drained (what a write derives in other rows may lag until then)."""
    drain(db)
    return {k: v for k, v in check_transition(db).items() if v[0]}


def sync_leftovers(db: dict[str, Any]) -> list[str]:
    """Triggers, functions and views of the transition (its sync, phase 3's linkage rule) still in
    the database. The ledger's own function (revoke_default_grants) stays with the ledger."""
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT 'trigger ' || tgname FROM pg_trigger
                            WHERE NOT tgisinternal AND tgname LIKE 'pgmigrate%%'
                           UNION ALL
                           SELECT 'function ' || n.nspname || '.' || p.proname
                             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                            WHERE (n.nspname = 'migration_ledger' AND p.proname <> 'revoke_default_grants')
                               OR p.proname LIKE 'transition%%' OR p.proname LIKE 'phase3%%'
                           UNION ALL
                           SELECT 'view ' || c.relnamespace::regnamespace || '.' || c.relname
                             FROM pg_class c
                            WHERE c.relkind = 'v' AND c.relnamespace = to_regnamespace('migration_ledger')""")
            rows = [r[0] for r in cur.fetchall()]
        conn.rollback()
    finally:
        conn.close()
    return sorted(rows)
