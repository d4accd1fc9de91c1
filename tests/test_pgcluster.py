"""tools/pgcluster.py against real PostgreSQL: lifecycle, errors, seeding, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from conftest import TEMPLATE_SCALE
from helpers import REPO_ROOT, connect, make_cluster_tempdir, pgcluster

PGCLUSTER = REPO_ROOT / "tools" / "pgcluster.py"


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory for a test's own clusters, destroyed afterwards."""
    base = make_cluster_tempdir("pytest-scratch-")
    try:
        yield base
    finally:
        for datadir in base.iterdir():
            if (datadir / "PG_VERSION").exists():
                pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PGCLUSTER), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def scalar(db: dict[str, Any], query: str) -> Any:
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0]
    finally:
        conn.close()


# --- finding programs and ports -------------------------------------------------------


@pytest.mark.parametrize("name", ["initdb", "pg_ctl", "postgres", "psql"])
def test_find_pg_bin_finds_programs(name: str) -> None:
    path = Path(pgcluster.find_pg_bin(name))
    assert path.is_absolute()
    assert os.access(path, os.X_OK)


def test_find_pg_bin_falls_back_to_debian_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    debian_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not debian_dirs:
        pytest.skip("no Debian-style /usr/lib/postgresql/<version>/bin here")
    monkeypatch.setenv("PATH", "/nonexistent")
    found = Path(pgcluster.find_pg_bin("initdb"))
    assert found.parent.parent.parent == Path("/usr/lib/postgresql")


def test_find_pg_bin_error_says_how_to_fix() -> None:
    with pytest.raises(pgcluster.PgClusterError, match="Install the server"):
        pgcluster.find_pg_bin("no_such_pg_program")


def test_free_port_is_bindable() -> None:
    port = pgcluster.free_port()
    assert 1024 <= port <= 65535
    assert pgcluster._port_is_free(port)


# --- the session cluster --------------------------------------------------------------


def test_cluster_accepts_password_over_tcp(pg_cluster: dict[str, Any]) -> None:
    assert pg_cluster["host"] == "127.0.0.1"
    assert pg_cluster["user"] == "postgres"
    assert scalar(pg_cluster, "SELECT current_user") == "postgres"
    assert scalar(pg_cluster, "SHOW listen_addresses") == "127.0.0.1"
    assert scalar(pg_cluster, "SHOW unix_socket_directories") == pg_cluster["datadir"]


def test_cluster_rejects_wrong_password(pg_cluster: dict[str, Any]) -> None:
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect({**pg_cluster, "password": "wrong"})


def test_cluster_uses_scram(pg_cluster: dict[str, Any]) -> None:
    rule = scalar(
        pg_cluster,
        "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1",
    )
    assert rule == "scram-sha-256"


def test_start_is_idempotent(pg_cluster: dict[str, Any]) -> None:
    again = pgcluster.start_cluster(Path(pg_cluster["datadir"]), password=pg_cluster["password"])
    assert again == pg_cluster


def test_start_on_busy_port_is_a_clear_error(pg_cluster: dict[str, Any], scratch: Path) -> None:
    datadir = scratch / "busy"
    with pytest.raises(pgcluster.PgClusterError) as excinfo:
        pgcluster.start_cluster(datadir, port=pg_cluster["port"])
    message = str(excinfo.value)
    assert f"port {pg_cluster['port']}" in message
    assert "already in use" in message
    assert "--port" in message
    assert not datadir.exists(), "nothing should be created before the port check"


def test_restart_with_other_password_is_refused(pg_cluster: dict[str, Any]) -> None:
    with pytest.raises(pgcluster.PgClusterError, match="another superuser password"):
        pgcluster.start_cluster(Path(pg_cluster["datadir"]), password="not-the-one")


# --- lifecycle of a cluster of our own ------------------------------------------------


def test_start_stop_destroy(scratch: Path) -> None:
    datadir = scratch / "life"
    info = pgcluster.start_cluster(datadir, password="lifecycle")
    assert info["datadir"] == str(datadir.resolve())
    assert scalar(info, "SELECT 1") == 1
    assert pgcluster.cluster_status(datadir)["running"] is True

    assert pgcluster.stop_cluster(datadir) is True
    assert pgcluster.stop_cluster(datadir) is False, "stopping twice is no error"
    status = pgcluster.cluster_status(datadir)
    assert status == {
        "datadir": str(datadir.resolve()),
        "initialized": True,
        "running": False,
        "port": info["port"],
    }
    with pytest.raises(psycopg2.OperationalError):
        connect(info)

    restarted = pgcluster.start_cluster(datadir, password="lifecycle")
    assert restarted == info, "a restart keeps its port when it is still free"

    assert pgcluster.destroy_cluster(datadir) is True
    assert not datadir.exists()
    assert pgcluster.destroy_cluster(datadir) is False, "destroying twice is no error"


def test_destroy_refuses_a_directory_that_is_not_a_cluster(scratch: Path) -> None:
    keep = scratch / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("keep me")
    with pytest.raises(pgcluster.PgClusterError, match="refusing to delete"):
        pgcluster.destroy_cluster(keep)
    assert (keep / "notes.txt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to postgres")
def test_unreachable_datadir_is_a_clear_error(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(pgcluster.PgClusterError, match=r"cannot enter .*chmod o\+x"):
        pgcluster.start_cluster(private / "data")
    assert not (private / "data").exists()


# --- seeding --------------------------------------------------------------------------


def md5_uuid(text: str) -> str:
    return str(uuid.UUID(hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()))


def expected_counts(scale: int) -> dict[str, int]:
    """What generate.sql must produce, worked out from its rules independently."""
    clients = range(1, scale + 1)
    overrides = [(i, j) for i in clients for j in range(10)]
    installs = [(i, k) for i in clients for k in range(3)]
    orphans = range(1, max(1, scale // 20) + 1)
    return {
        "clients": scale,
        "modules": 41,
        "overrides": len(overrides) + len(orphans),
        "orphan_overrides": len(orphans),
        "unknown_app_overrides": sum((i + 3 * j) % 45 >= 40 for i, j in overrides),
        "analytics_overrides": sum((i + 3 * j) % 45 == 0 for i, j in overrides),
        "enabled_overrides": sum((i + j) % 4 != 0 for i, j in overrides) + sum(o % 2 == 0 for o in orphans),
        "installations": len(installs),
        "failed_installations": sum((i + k) % 10 == 0 for i, k in installs),
        "duplicate_module_installations": sum((i * 7 + k * 13) % 40 == 0 and i % 2 == 0 for i, k in installs),
        "recent_installations": sum((i * 3 + k * 11) % 60 <= 6 for i, k in installs),
        "deployments": sum(i % 5 != 0 for i in clients),
        "deployed": sum(i % 5 in (1, 2) for i in clients),
        "pending": sum(i % 5 == 3 for i in clients),
        "failed_deployments": sum(i % 5 == 4 for i in clients),
    }


ACTUAL_COUNTS_SQL = """
SELECT json_build_object(
  'clients', (SELECT count(*) FROM clients_enhanced),
  'modules', (SELECT count(*) FROM marketplace_modules),
  'overrides', (SELECT count(*) FROM client_app_overrides),
  'orphan_overrides', (SELECT count(*) FROM client_app_overrides o
                       WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced c
                                         WHERE c.id = o.client_id)),
  'unknown_app_overrides', (SELECT count(*) FROM client_app_overrides o
                            WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules m
                                              WHERE m.name = o.app_name)),
  'analytics_overrides', (SELECT count(*) FROM client_app_overrides
                          WHERE app_name = 'analytics'),
  'enabled_overrides', (SELECT count(*) FROM client_app_overrides WHERE enabled),
  'installations', (SELECT count(*) FROM module_installations),
  'failed_installations', (SELECT count(*) FROM module_installations
                           WHERE status = 'failed'),
  'duplicate_module_installations', (SELECT count(*) FROM module_installations
                                     WHERE module_id =
                                           md5('module-dup-analytics')::uuid),
  'recent_installations', (SELECT count(*) FROM module_installations
                           WHERE installed_at > now() - interval '7 days'),
  'deployments', (SELECT count(*) FROM client_deployments),
  'deployed', (SELECT count(*) FROM client_deployments WHERE status = 'deployed'),
  'pending', (SELECT count(*) FROM client_deployments WHERE status = 'pending'),
  'failed_deployments', (SELECT count(*) FROM client_deployments
                         WHERE status = 'failed')
)
"""


def test_expected_counts_at_scale_50_by_hand() -> None:
    """The headline numbers, spelled out: 50 clients, 500 + 2 orphan overrides, ..."""
    counts = expected_counts(50)
    assert counts["clients"] == 50
    assert counts["overrides"] == 502
    assert counts["orphan_overrides"] == 2
    assert counts["installations"] == 150
    assert counts["deployments"] == 40
    assert (counts["deployed"], counts["pending"], counts["failed_deployments"]) == (
        20,
        10,
        10,
    )


def test_seed_produces_expected_counts(fresh_db: dict[str, Any]) -> None:
    actual = scalar(fresh_db, ACTUAL_COUNTS_SQL)
    assert actual == expected_counts(TEMPLATE_SCALE)


def test_seed_is_deterministic(fresh_db: dict[str, Any]) -> None:
    assert scalar(fresh_db, "SELECT id::text FROM clients_enhanced WHERE name = 'Client 7'") == (md5_uuid("client-7"))
    names = scalar(
        fresh_db,
        "SELECT array_agg(version ORDER BY created_at) FROM marketplace_modules WHERE name = 'analytics'",
    )
    assert names == ["1.0.0", "2.0.0"], "the analytics listing is duplicated, newer second"


def test_seed_refuses_to_seed_twice(pg_cluster: dict[str, Any], template_db: str) -> None:
    with pytest.raises(pgcluster.PgClusterError, match="already holds the baseline"):
        pgcluster.seed_database(pg_cluster, template_db, 5)
    assert pgcluster.seed_database(pg_cluster, template_db, 5, if_new=True) is False


def test_seed_keeps_password_out_of_argv(pg_cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append((list(cmd), dict(kwargs.get("env") or {})))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(pgcluster.subprocess, "run", spy)
    dbname = f"argv_{uuid.uuid4().hex[:8]}"
    assert pgcluster.seed_database(pg_cluster, dbname, 1) is True
    psql_calls = [(cmd, env) for cmd, env in calls if Path(cmd[0]).name == "psql"]
    assert psql_calls
    for cmd, env in psql_calls:
        assert not any(pg_cluster["password"] in arg for arg in cmd)
        assert env["PGPASSWORD"] == pg_cluster["password"]
    assert scalar({**pg_cluster, "dbname": dbname}, "SELECT count(*) FROM clients_enhanced") == 1


def test_seed_rejects_nonpositive_scale(pg_cluster: dict[str, Any]) -> None:
    with pytest.raises(pgcluster.PgClusterError, match="positive"):
        pgcluster.seed_database(pg_cluster, "never_created", 0)


# --- command line ---------------------------------------------------------------------


def test_cli_lifecycle(scratch: Path) -> None:
    datadir, state = scratch / "cli", scratch / "state" / "cluster.json"
    started = cli(
        "start",
        "--datadir",
        str(datadir),
        "--password",
        "cli-pw",
        "--state",
        str(state),
    )
    assert started.returncode == 0, started.stderr
    assert "pgcluster: started" in started.stderr
    info = json.loads(started.stdout)
    assert json.loads(state.read_text()) == info
    assert state.stat().st_mode & 0o077 == 0, "the state file holds a password"

    again = cli("start", "--datadir", str(datadir), "--password", "cli-pw")
    assert again.returncode == 0
    assert "pgcluster: already running" in again.stderr
    assert json.loads(again.stdout) == info

    seeded = cli("seed", "--state", str(state), "--dbname", "agency", "--scale", "3")
    assert seeded.returncode == 0, seeded.stderr
    assert json.loads(seeded.stdout)["seeded"] is True
    skipped = cli("seed", "--state", str(state), "--dbname", "agency", "--scale", "3", "--if-new")
    assert json.loads(skipped.stdout)["seeded"] is False
    assert scalar({**info, "dbname": "agency"}, "SELECT count(*) FROM clients_enhanced") == 3

    status = cli("status", "--datadir", str(datadir))
    assert json.loads(status.stdout)["running"] is True

    busy = cli("start", "--datadir", str(scratch / "other"), "--port", str(info["port"]))
    assert busy.returncode == 1
    assert f"pgcluster: error: port {info['port']} on 127.0.0.1 is already in use" in (busy.stderr)

    stopped = cli("stop", "--datadir", str(datadir))
    assert "pgcluster: stopped" in stopped.stderr
    assert "pgcluster: not running" in cli("stop", "--datadir", str(datadir)).stderr
    assert "pgcluster: destroyed" in cli("destroy", "--datadir", str(datadir)).stderr
    assert not datadir.exists()


def test_cli_password_from_environment(scratch: Path) -> None:
    datadir = scratch / "envpw"
    env = {**os.environ, "PGCLUSTER_PASSWORD": "from-env"}
    result = subprocess.run(
        [sys.executable, str(PGCLUSTER), "start", "--datadir", str(datadir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["password"] == "from-env"


def test_cli_seed_without_state_file_says_how_to_fix(scratch: Path) -> None:
    result = cli(
        "seed",
        "--state",
        str(scratch / "missing.json"),
        "--dbname",
        "x",
        "--scale",
        "1",
    )
    assert result.returncode == 1
    assert "pgcluster.py start --datadir D --state" in result.stderr
