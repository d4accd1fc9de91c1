"""Connection poolers: Debian's PgBouncer (tools/ensure-postgres.sh installs it), started by the
tests on a free port in front of the session cluster, with one pool per mode for the database
under test: <db> (session mode, the name the migration expects) and <db>_tx (transaction mode)
and <db>_stmt (statement mode).

A migration through a transaction- or statement-mode pool is refused before anything changes, with
a message that names the direct connection and the session-mode pool; a session-mode pool is
accepted; today's application keeps working through a transaction-mode pool while migrate.yml
-e phase=all runs on the direct connection.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from helpers import (
    db_snapshot,
    ledger_exists,
    make_cluster_tempdir,
    pgcluster,
    playbook_output,
    run_playbook,
    snapshot_diff,
)
from rehearsal_helpers import database_exists, out_of, run_with_inventory, two_host_inventory
from rollback_helpers import applied, out_dirs_in

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _pool_entry(db: dict[str, Any], mode: str) -> str:
    return f"host={db['host']} port={db['port']} dbname={db['dbname']} pool_mode={mode}"


# `options`: phase 1's pg_dump asks for default_transaction_read_only=on in its startup packet,
# which PgBouncer refuses unless told to ignore it (pg_dump's own transactions are READ ONLY
# anyway); docs/platforms.md says so.
@pytest.fixture
def pgbouncer(fresh_db: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A PgBouncer for fresh_db: {"port", "session", "transaction", "statement"} (connection dicts)."""
    if not os.access(PGBOUNCER, os.X_OK):
        pytest.fail("pgbouncer is not installed: run tools/ensure-postgres.sh")
    base = make_cluster_tempdir("pytest-pgbouncer-")
    base.chmod(0o755)
    port = pgcluster.free_port()
    name = fresh_db["dbname"]
    (base / "userlist.txt").write_text(f'"{fresh_db["user"]}" "{fresh_db["password"]}"\n')
    (base / "pgbouncer.ini").write_text(f"""[databases]
{name} = {_pool_entry(fresh_db, "session")}
{name}_tx = {_pool_entry(fresh_db, "transaction")}
{name}_stmt = {_pool_entry(fresh_db, "statement")}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {base / "userlist.txt"}
pidfile = {base / "pgbouncer.pid"}
logfile = {base / "pgbouncer.log"}
default_pool_size = 10
max_client_conn = 200
ignore_startup_parameters = extra_float_digits, options
""")
    for path in base.iterdir():
        path.chmod(0o644)
    cmd = [PGBOUNCER, str(base / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (base / "pgbouncer.log").read_text() if (base / "pgbouncer.log").exists() else ""
                    pytest.fail(f"pgbouncer did not start: {proc.stderr.read() if proc.stderr else ''}{log}")
                time.sleep(0.1)
        via = {**fresh_db, "host": "127.0.0.1", "port": port}
        yield {"port": port, "session": via, "transaction": {**via, "dbname": f"{name}_tx"},
               "statement": {**via, "dbname": f"{name}_stmt"}, "direct": fresh_db}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_transaction_and_statement_pools_are_refused(pgbouncer: dict[str, Any], mode: str, tmp_path: Path) -> None:
    direct = pgbouncer["direct"]
    before = db_snapshot(direct)
    result = run_playbook("playbooks/migrate.yml", pgbouncer[mode], {"phase": "all", **out_dirs_in(tmp_path)})
    assert result.returncode != 0, playbook_output(result)
    text = " ".join((result.stdout + result.stderr).split())
    assert "connection pooler in transaction or statement mode" in text, playbook_output(result)
    assert "direct connection" in text and "session-mode pool" in text
    assert "Nothing was changed" in text
    assert not ledger_exists(direct)
    assert snapshot_diff(before, db_snapshot(direct)) == []


def test_session_pool_is_accepted(pgbouncer: dict[str, Any], tmp_path: Path) -> None:
    result = run_playbook("playbooks/migrate.yml", pgbouncer["session"], {"phase": "1", **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    assert applied(pgbouncer["direct"]) == ["1"]


class Application(threading.Thread):
    """Today's application through the pooler: a new transaction every 10 ms reading a client's
    overrides with the old application's columns only (phase 6 validates activation_status
    against `enabled`, so flips during the run are the transition sync's tests, not these)."""

    def __init__(self, db: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.done, self.errors = db, threading.Event(), 0, []

    def run(self) -> None:
        conn = psycopg2.connect(host=self.db["host"], port=self.db["port"], user=self.db["user"],
                                password=self.db["password"], dbname=self.db["dbname"], connect_timeout=10)
        try:
            n = 0
            while not self.stop.is_set():
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT id, client_id, app_name, enabled, settings, created_at, updated_at "
                                    "FROM client_app_overrides WHERE client_id = md5('client-' || %s)::uuid",
                                    (n % 50 + 1,))
                        cur.fetchall()
                    conn.commit()
                    self.done += 1
                except psycopg2.Error as exc:
                    self.errors.append(str(exc).strip())
                    conn.rollback()
                n += 1
                self.stop.wait(0.01)
        finally:
            conn.close()


def test_application_through_a_transaction_pool_keeps_working(pgbouncer: dict[str, Any], tmp_path: Path) -> None:
    """migrate.yml -e phase=all on the direct connection while today's application runs through
    PgBouncer in transaction mode: no failed transaction."""
    apps = [Application(pgbouncer["transaction"]) for _ in range(4)]
    for app in apps:
        app.start()
    try:
        result = run_playbook("playbooks/migrate.yml", pgbouncer["direct"], {"phase": "all", **out_dirs_in(tmp_path)})
    finally:
        for app in apps:
            app.stop.set()
        for app in apps:
            app.join(10)
    assert result.returncode == 0, playbook_output(result)
    assert applied(pgbouncer["direct"]) == ["1", "2", "3", "4", "5", "6"]
    assert [e for app in apps for e in app.errors] == []
    assert sum(app.done for app in apps) > 200


def test_clone_from_a_transaction_pool_is_refused(pgbouncer: dict[str, Any], tmp_path: Path) -> None:
    """The clone's pg_dump imports the snapshot the module's session exports: a transaction-mode
    source is refused before the staging database is created."""
    staging = {**pgbouncer["direct"], "dbname": f"{pgbouncer['direct']['dbname']}_staging"}
    inventory = two_host_inventory(pgbouncer["transaction"], staging)
    result = run_with_inventory("playbooks/clone.yml", inventory, out_dirs_in(tmp_path))
    assert result.returncode != 0, out_of(result)
    assert "connection pooler in transaction or statement mode" in out_of(result)
    assert not database_exists(staging)
