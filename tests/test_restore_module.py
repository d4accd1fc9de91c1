"""playbooks/restore.yml on pgmigrate_restore, the clone's mechanics (module_utils/pgmigrate_dump):
a failed pg_restore drops its half-made database, a row-count difference keeps the copy, check
mode creates nothing, a live database whose name needs quoting is replaced, the password appears
nowhere; and the shared swap (swap_in) itself: both names or neither, the sessions ended, the
database open again after a failure.

The archives are fresh_db's, written by playbooks/backup.yml (the manifest the restore reads)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from helpers import clone_database, connect, drop_database, playbook_output, plugin, query, run_playbook
from rehearsal_helpers import databases_like
from rollback_helpers import RESTORE, out_dirs_in

dump_utils = plugin("module_utils", "pgmigrate_dump")


def databases(db: dict[str, Any]) -> list[str]:
    return [r[0] for r in query({**db, "dbname": "postgres"}, "SELECT datname::text FROM pg_database ORDER BY 1")]


def back_up(db: dict[str, Any], tmp_path: Path) -> Path:
    """A phase-1-style archive of db (backup.yml), with its manifest beside it."""
    result = run_playbook("playbooks/backup.yml", db, {"backup_dir": str(tmp_path / "backups"),
                                                       **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    [archive] = list((tmp_path / "backups").rglob("*.dump"))
    return archive


def restore(db: dict[str, Any], tmp_path: Path, check: bool = False, **extra: Any) -> subprocess.CompletedProcess[str]:
    return run_playbook(RESTORE, db, {**out_dirs_in(tmp_path), **extra}, check=check, extra_args=["-vvv"])


def text_of(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_restore_hides_the_password_and_check_mode_creates_nothing(fresh_db: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    archive = back_up(fresh_db, tmp_path)
    target = f"{fresh_db['dbname']}_r"
    dbs = databases(fresh_db)
    checked = restore(fresh_db, tmp_path, check=True, restore_archive=str(archive), restore_db=target)
    assert checked.returncode == 0, playbook_output(checked)
    assert f"Check mode: would restore {archive} into {target}" in text_of(checked)
    assert databases(fresh_db) == dbs
    result = restore(fresh_db, tmp_path, restore_archive=str(archive), restore_db=target)
    try:
        assert result.returncode == 0, playbook_output(result)
        counts = json.loads(Path(f"{archive}.manifest.json").read_text())["row_counts"]
        for table, rows in counts.items():
            assert f"{table}: {rows} rows restored, {rows} recorded at backup time" in text_of(result)
        assert fresh_db["password"] not in result.stdout + result.stderr
        restored = {**fresh_db, "dbname": target}
        # A database without a ledger gets none: the restore is recorded only where one is.
        assert query(restored, "SELECT to_regclass('migration_ledger.history')") == [(None,)]
    finally:
        drop_database({**fresh_db, "dbname": target})


def test_a_failed_pg_restore_drops_the_new_database(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """The archive names an owner the server no longer has: pg_restore fails in its one
    transaction; the new database is dropped again and the error says so."""
    owner = f"gone_{uuid.uuid4().hex[:8]}"
    query(fresh_db, f"CREATE ROLE {owner} NOLOGIN; CREATE TABLE owned_by_gone (i int); "
                    f"ALTER TABLE owned_by_gone OWNER TO {owner}")
    archive = back_up(fresh_db, tmp_path)
    query(fresh_db, f"DROP TABLE owned_by_gone; DROP ROLE {owner}")
    target = f"{fresh_db['dbname']}_r"
    result = restore(fresh_db, tmp_path, restore_archive=str(archive), restore_db=target)
    text = text_of(result)
    assert result.returncode != 0, playbook_output(result)
    assert "pg_restore failed" in text and owner in text and "The target database was dropped" in text, text[-3000:]
    assert target not in databases(fresh_db)


def test_a_row_count_difference_keeps_the_copy(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    archive = back_up(fresh_db, tmp_path)
    manifest_path = Path(f"{archive}.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    table = sorted(manifest["row_counts"])[0]
    manifest["row_counts"][table] += 1
    manifest_path.write_text(json.dumps(manifest))
    target = f"{fresh_db['dbname']}_r"
    result = restore(fresh_db, tmp_path, restore_archive=str(archive), restore_db=target)
    try:
        text = text_of(result)
        assert result.returncode != 0, playbook_output(result)
        assert "has other row counts than recorded at backup time" in text
        assert f"{table}: {manifest['row_counts'][table] - 1} rows restored, {manifest['row_counts'][table]}" in text
        assert target in databases(fresh_db), "the copy is kept for inspection"
    finally:
        drop_database({**fresh_db, "dbname": target})


def test_a_live_database_whose_name_needs_quoting_is_replaced(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """The old role wrote the live database's name into SQL between quotes by hand; the module
    quotes it as an identifier and a literal."""
    live = clone_database(fresh_db, f"Live-{uuid.uuid4().hex[:6]}'s")
    try:
        archive = back_up(live, tmp_path)
        query(live, "CREATE TABLE written_after_the_backup (i int)")
        # The copy is built under a plain name (restore_db's rule), then takes the live one's.
        result = restore(live, tmp_path, restore_archive=str(archive), restore_replace=True,
                         restore_confirm=live["dbname"], restore_db=f"scratch_{uuid.uuid4().hex[:8]}")
        replaced = [d for d in databases(live) if d.startswith(f"{live['dbname']}_replaced_")]
        assert result.returncode == 0, playbook_output(result)
        assert len(replaced) == 1, databases(live)
        assert query(live, "SELECT to_regclass('written_after_the_backup') IS NULL") == [(True,)]
        assert query({**live, "dbname": replaced[0]}, "SELECT count(*) FROM written_after_the_backup") == [(0,)]
        assert query(live, "SELECT datallowconn FROM pg_database WHERE datname = current_database()") == [(True,)]
    finally:
        for name in [live["dbname"], *databases_like(live, f"{live['dbname']}\\_%")]:
            drop_database({**live, "dbname": name})


# --- the shared swap ------------------------------------------------------------------------

def admin_cursor(db: dict[str, Any]) -> Any:
    conn = connect({**db, "dbname": "postgres"})
    conn.autocommit = True
    return conn


def test_swap_in_ends_sessions_and_swaps_both_names(fresh_db: dict[str, Any]) -> None:
    new = clone_database(fresh_db, f'new "{uuid.uuid4().hex[:6]}"')
    query(new, "CREATE TABLE marker (i int)")
    aside = f"aside {uuid.uuid4().hex[:6]}"
    session = connect(fresh_db)
    admin = admin_cursor(fresh_db)
    try:
        with admin.cursor() as cur:
            dump_utils.swap_in(cur, new["dbname"], fresh_db["dbname"], aside, close=True)
        assert query(fresh_db, "SELECT to_regclass('marker') IS NOT NULL") == [(True,)]
        assert query({**fresh_db, "dbname": aside}, "SELECT to_regclass('marker') IS NULL") == [(True,)]
        assert query(fresh_db, "SELECT datname::text, datallowconn FROM pg_database WHERE datname = ANY(%s) "
                               "ORDER BY 1", ([fresh_db["dbname"], aside],)) == sorted(
            [(fresh_db["dbname"], True), (aside, True)])
        with pytest.raises(psycopg2.OperationalError), session.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        session.close()
        admin.close()
        for name in (aside, new["dbname"]):
            drop_database({**fresh_db, "dbname": name})


def test_a_failed_swap_leaves_both_databases_and_opens_the_target_again(fresh_db: dict[str, Any]) -> None:
    """The name to move the target aside to is taken: nothing is renamed, and the target, closed
    for the swap, accepts sessions again."""
    new = clone_database(fresh_db, f"new_{uuid.uuid4().hex[:6]}")
    taken = clone_database(fresh_db, f"taken_{uuid.uuid4().hex[:6]}")
    query(new, "CREATE TABLE marker (i int)")
    admin = admin_cursor(fresh_db)
    try:
        with admin.cursor() as cur, pytest.raises(dump_utils.MigrationError, match="already exists"):
            dump_utils.swap_in(cur, new["dbname"], fresh_db["dbname"], taken["dbname"], close=True)
        assert query(fresh_db, "SELECT to_regclass('marker') IS NULL, datallowconn FROM pg_database "
                               "WHERE datname = current_database()") == [(True, True)]
        assert query(new, "SELECT to_regclass('marker') IS NOT NULL") == [(True,)]
    finally:
        admin.close()
        for db in (new, taken):
            drop_database(db)
