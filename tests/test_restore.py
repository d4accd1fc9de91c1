"""playbooks/restore.yml: a verified phase-1 backup into a new database (by default) or, with a
flag and the database's name repeated, in place of the live one; row counts compared with those
recorded at backup time; every refusal before anything changes.

The archive is the one phase 1 wrote for the staged database (rollback_helpers.staged).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    db_snapshot,
    drop_database,
    playbook_output,
    query,
    run_playbook,
    snapshot_diff,
)
from rollback_helpers import (
    RESTORE,
    Staged,
    fidelity_diff,
    out_dirs_in,
)


def databases(db: dict[str, Any]) -> list[str]:
    return [r[0] for r in query({**db, "dbname": "postgres"}, "SELECT datname::text FROM pg_database ORDER BY 1")]


@pytest.fixture
def archive(staged: Staged) -> Path:
    """The staged database's phase-1 archive (with its manifest beside it)."""
    details = query(staged.db, """SELECT details FROM migration_ledger.history
                                   WHERE phase = '1' AND direction = 'apply' AND status = 'succeeded'
                                   ORDER BY id LIMIT 1""")[0][0]
    path = Path(details["backup"]["path"])
    assert path.is_file() and Path(f"{path}.manifest.json").is_file()
    return path


@pytest.fixture
def live(staged: Staged) -> Iterator[dict[str, Any]]:
    """A 'live' database: a copy of the staged one after phase 4."""
    db = staged.clone(4)
    try:
        yield db
    finally:
        drop_database(db)


def restore(db: dict[str, Any], tmp_path: Path, **extra: Any) -> Any:
    return run_playbook(RESTORE, db, {**out_dirs_in(tmp_path), **extra})


def without_roles(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Roles are cluster-wide: other tests of the session change them, never a restore."""
    return {k: v for k, v in snapshot.items() if k != "roles"}


def test_restore_into_a_new_database(staged: Staged, live: dict[str, Any], archive: Path,
                                     tmp_path: Path) -> None:
    """By default the restore goes into a new database; its content is the pre-migration one,
    row counts are compared and printed, the restore is recorded in its ledger, and the live
    database is not touched."""
    before_live = db_snapshot(live)
    target = f"{live['dbname']}_copy"
    result = restore(live, tmp_path, restore_archive=str(archive), restore_db=target)
    try:
        assert result.returncode == 0, playbook_output(result)
        text = " ".join(result.stdout.split())
        assert "client_app_overrides: 502 rows restored, 502 recorded at backup time" in text
        assert f"into the new database {target}" in text
        restored = {**live, "dbname": target}
        assert fidelity_diff(without_roles(staged.snapshots[0]), without_roles(db_snapshot(restored))) == []
        assert query(restored, "SELECT phase, status FROM migration_ledger.history ORDER BY id") == [
            ("1", "interrupted"), ("restore", "succeeded")]
        assert snapshot_diff(before_live, db_snapshot(live)) == []
    finally:
        drop_database({**live, "dbname": target})


def test_replace_the_live_database(staged: Staged, live: dict[str, Any], archive: Path, tmp_path: Path) -> None:
    """With restore_replace and restore_confirm the restored copy takes the live database's name;
    the replaced database is kept, with its data, under another name."""
    # The copy is named like its own backup would be: the manifest must be of this database.
    own = tmp_path / "own" / f"backup_pre_migration_{live['dbname']}_20260101_000000.dump"
    own.parent.mkdir()
    shutil.copy(archive, own)
    manifest = json.loads(Path(f"{archive}.manifest.json").read_text())
    Path(f"{own}.manifest.json").write_text(json.dumps({**manifest, "database": live["dbname"]}))
    migrated_counts = query(live, "SELECT count(*) FROM orchestration_workflows")[0][0]
    assert migrated_counts > 0

    result = restore(live, tmp_path, restore_archive=str(own), restore_replace=True,
                     restore_confirm=live["dbname"])
    replaced = [d for d in databases(live) if d.startswith(f"{live['dbname']}_replaced_")]
    try:
        assert result.returncode == 0, playbook_output(result)
        assert len(replaced) == 1, databases(live)
        assert fidelity_diff(without_roles(staged.snapshots[0]), without_roles(db_snapshot(live))) == []
        old = {**live, "dbname": replaced[0]}
        assert query(old, "SELECT count(*) FROM orchestration_workflows")[0][0] == migrated_counts
        assert replaced[0] in " ".join(result.stdout.split())
    finally:
        for name in replaced:
            drop_database({**live, "dbname": name})


# --- refusals: nothing changes, no database appears ---------------------------------------------


@pytest.mark.parametrize(("extra", "needle"), [
    ({}, "No phase-1 backup of"),
    ({"restore_replace": True}, "needs its name repeated"),
    ({"restore_replace": True, "restore_confirm": "another"}, "needs its name repeated"),
    ({"restore_db": "Bad-Name"}, "not a plain database name"),
    ({"restore_archive": "/nonexistent/backup.dump"}, "does not exist"),
])
def test_bad_input_is_refused(live: dict[str, Any], tmp_path: Path, extra: dict[str, Any], needle: str) -> None:
    before, dbs = db_snapshot(live), databases(live)
    result = restore(live, tmp_path, **extra)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, playbook_output(result)
    assert needle in text and "Nothing was changed" in text, text[-3000:]
    assert snapshot_diff(before, db_snapshot(live)) == [] and databases(live) == dbs


def test_unverifiable_archives_are_refused(live: dict[str, Any], archive: Path, tmp_path: Path) -> None:
    """An archive without a manifest, or whose bytes differ from the manifest's sha256 (changed,
    truncated), is refused before anything is created."""
    dbs = databases(live)
    bare = tmp_path / "bare.dump"
    shutil.copy(archive, bare)
    result = restore(live, tmp_path, restore_archive=str(bare))
    assert result.returncode != 0 and "has no manifest" in " ".join(result.stdout.split()), playbook_output(result)

    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(archive.read_bytes()[:-100])
    shutil.copy(f"{archive}.manifest.json", f"{truncated}.manifest.json")
    result = restore(live, tmp_path, restore_archive=str(truncated))
    text = " ".join(result.stdout.split())
    assert result.returncode != 0 and "does not match its manifest" in text, playbook_output(result)
    assert databases(live) == dbs


def test_existing_target_is_refused(live: dict[str, Any], archive: Path, tmp_path: Path) -> None:
    """A restore never writes into an existing database, the live one included."""
    for target in ("postgres", live["dbname"]):
        before = db_snapshot(live)
        result = restore(live, tmp_path, restore_archive=str(archive), restore_db=target)
        text = " ".join(result.stdout.split())
        assert result.returncode != 0, playbook_output(result)
        assert f"Database {target} exists" in text and "restore_replace" in text
        assert snapshot_diff(before, db_snapshot(live)) == []


def test_production_requires_approval(live: dict[str, Any], archive: Path, tmp_path: Path) -> None:
    dbs = databases(live)
    result = run_playbook(RESTORE, live, {**out_dirs_in(tmp_path), "restore_archive": str(archive)},
                          env_name="production")
    assert result.returncode != 0 and "approved_by" in result.stdout, playbook_output(result)
    assert databases(live) == dbs


def test_replacing_with_another_databases_backup_is_refused(live: dict[str, Any], archive: Path,
                                                            tmp_path: Path) -> None:
    """The staged database's backup cannot replace another (live) database."""
    before, dbs = db_snapshot(live), databases(live)
    result = restore(live, tmp_path, restore_archive=str(archive), restore_replace=True,
                     restore_confirm=live["dbname"])
    text = " ".join(result.stdout.split())
    assert result.returncode != 0 and "is a backup of rb_staged, not of" in text, playbook_output(result)
    assert snapshot_diff(before, db_snapshot(live)) == [] and databases(live) == dbs


def test_login_without_createdb_is_refused(live: dict[str, Any], archive: Path, tmp_path: Path) -> None:
    """A login that may not create databases is told so before anything is created."""
    query(live, "DROP ROLE IF EXISTS restore_nocreate")
    query(live, "CREATE ROLE restore_nocreate LOGIN NOCREATEDB PASSWORD 'nocreate-pw-1'")
    try:
        dbs = databases(live)
        weak = {**live, "user": "restore_nocreate", "password": "nocreate-pw-1"}
        result = run_playbook(RESTORE, weak, {**out_dirs_in(tmp_path), "restore_archive": str(archive)})
        text = " ".join(result.stdout.split())
        assert result.returncode != 0 and "may not create databases (CREATEDB)" in text, playbook_output(result)
        assert databases(live) == dbs
    finally:
        query(live, "DROP ROLE restore_nocreate")
