"""Runs that survive being interrupted: migrate.yml or rollback.yml killed (SIGKILL to the whole
process group: ansible-playbook, its workers, the modules) at several points, or its database
connection dropped, leaves a state the next run of the same command completes - no invalid
index, ledger and catalog agreeing, no row inserted twice, nothing left unfinished.

A killed client leaves its server session behind until the server notices; a real operator's
laptop dying is the same. The tests end those sessions (pg_terminate_backend) right after the
kill, as the server would on its next write to the dead socket.

Each test starts from a template of the staged database (rollback_helpers.staged) at the phase
it needs, and holds a lock from another session to catch the run at the point it wants.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    copy_repository,
    db_snapshot,
    drop_database,
    playbook_output,
    query,
    run_playbook,
)
from rollback_helpers import (
    MIGRATE,
    ROLLBACK,
    Background,
    Staged,
    applied,
    assert_consistent,
    fidelity_diff,
    holder,
    invalid_indexes,
    ledger_rows,
    out_dirs_in,
    phase3_content,
    terminate_backends,
    unfinished,
    wait_for,
)

SMALL_BATCHES = {"phase3_data_batch_size": 40, "phase3_data_min_batch_size": 40, "phase3_data_max_batch_size": 40}
SMALL_ROLLBACK_BATCHES = {"rollback_batch_size": 40, "rollback_min_batch_size": 40, "rollback_max_batch_size": 40}


def scalar(db: dict[str, Any], sql: str, args: Any = None) -> Any:
    return query(db, sql, args)[0][0]


@pytest.fixture
def stage_copy(staged: Staged, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    db = staged.clone(request.param)
    try:
        yield db
    finally:
        drop_database(db)


def kill(run: Background, db: dict[str, Any]) -> None:
    run.kill()
    terminate_backends(db)


def late_override(db: dict[str, Any], linked: bool) -> str:
    """An override phase 3 links (or linked), late both in id order and in the table's physical
    order: a batch holding it comes after others have committed."""
    return scalar(db, f"""
        SELECT id::text FROM client_app_overrides
         WHERE {'marketplace_module_id IS NOT NULL' if linked else
                'app_name IN (SELECT name FROM marketplace_modules)'}
           AND (ctid::text::point)[0] >= (SELECT max((ctid::text::point)[0]) FROM client_app_overrides) / 2
         ORDER BY id DESC LIMIT 1""")


def linked_count(db: dict[str, Any]) -> int:
    return scalar(db, "SELECT count(*) FROM client_app_overrides WHERE marketplace_module_id IS NOT NULL")


# --- migrate.yml ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage_copy", [2], indirect=True)
def test_migrate_killed_during_the_backfill(staged: Staged, stage_copy: dict[str, Any], tmp_path: Path) -> None:
    """Killed while phase 3 links overrides batch by batch (some committed, one waiting for a
    row lock): the rerun links the rest, inserts nothing twice, and ends as a run never killed."""
    db = stage_copy
    row = late_override(db, linked=False)
    blocker = holder(db, f"SELECT 1 FROM client_app_overrides WHERE id = '{row}' FOR UPDATE")
    run = Background(MIGRATE, db, {"phase": 3, **out_dirs_in(tmp_path), **SMALL_BATCHES}, tmp_path / "killed")
    try:
        wait_for(lambda: linked_count(db) > 0, "the first batches to commit", run)
        time.sleep(0.5)
        kill(run, db)
        assert 0 < linked_count(db) < scalar(db, "SELECT count(*) FROM migration_ledger.phase3_override_plan")
        assert ("3", "apply", "running") in ledger_rows(db)
        assert applied(db) == ["1", "2"]
    finally:
        blocker.rollback()
        blocker.close()
        run.close()
    again = run_playbook(MIGRATE, db, {"phase": 3, **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert ("3", "apply", "interrupted") in ledger_rows(db)
    assert applied(db) == ["1", "2", "3"]
    assert phase3_content(db) == staged.content
    assert_consistent(db)


@pytest.mark.parametrize("stage_copy", [2], indirect=True)
def test_connection_dropped_mid_phase(staged: Staged, stage_copy: dict[str, Any], tmp_path: Path) -> None:
    """The database connection dropped during the backfill (a restart, a failover, a network
    cut): the run fails and records it; the rerun completes."""
    db = stage_copy
    row = late_override(db, linked=False)
    blocker = holder(db, f"SELECT 1 FROM client_app_overrides WHERE id = '{row}' FOR UPDATE")
    run = Background(MIGRATE, db, {"phase": 3, **out_dirs_in(tmp_path), **SMALL_BATCHES}, tmp_path / "dropped")
    try:
        wait_for(lambda: linked_count(db) > 0, "the first batches to commit", run)
        terminate_backends(db)
        code = run.wait(timeout=300)
        output = run.output()
    finally:
        blocker.rollback()
        blocker.close()
        run.close()
    assert code != 0, output
    assert "Phase 3 failed" in output
    assert ("3", "apply", "failed") in ledger_rows(db)
    again = run_playbook(MIGRATE, db, {"phase": 3, **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert phase3_content(db) == staged.content
    assert_consistent(db)


@pytest.mark.parametrize("stage_copy", [1], indirect=True)
def test_migrate_killed_during_a_concurrent_index_build(stage_copy: dict[str, Any], tmp_path: Path) -> None:
    """Killed while CREATE INDEX CONCURRENTLY waits for an old snapshot (each try under
    lock_timeout leaves an invalid index behind): the rerun drops the invalid index and builds
    it again; nothing is left invalid."""
    db = stage_copy
    blocker = holder(db, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT count(*) FROM marketplace_modules")
    run = Background(MIGRATE, db, {"phase": 2, **out_dirs_in(tmp_path)}, tmp_path / "killed")
    try:
        wait_for(lambda: invalid_indexes(db), "an index build to wait and leave an invalid index", run)
        kill(run, db)
        assert ("2", "apply", "running") in ledger_rows(db)
    finally:
        blocker.rollback()
        blocker.close()
        run.close()
    assert invalid_indexes(db), "the kill should have left an invalid index behind"
    again = run_playbook(MIGRATE, db, {"phase": 2, **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert invalid_indexes(db) == []
    assert applied(db) == ["1", "2"]
    assert_consistent(db)


@pytest.mark.parametrize("stage_copy", [3], indirect=True)
def test_migrate_killed_during_constraint_validation(stage_copy: dict[str, Any], tmp_path: Path) -> None:
    """Killed in phase 4's validation step, one foreign key validated and the other not yet
    (a copy of the repository pauses between the two): the rerun validates both."""
    db = stage_copy
    repo = copy_repository(tmp_path / "repo")
    validate = repo / "migrations/ht036/phase4/deploy/030_validate.sql"
    second = "ALTER TABLE client_app_overrides VALIDATE CONSTRAINT fk_cao_installation"
    validate.write_text(validate.read_text().replace(second, f"SELECT pg_sleep(300);\n\n{second}"))
    run = Background(MIGRATE, db, {"phase": 4, **out_dirs_in(tmp_path)}, tmp_path / "killed", repo_root=repo)
    try:
        wait_for(lambda: scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(300)%%'"),
                 "the validation step", run)
        kill(run, db)
    finally:
        run.close()
    assert query(db, "SELECT conname::text, convalidated FROM pg_constraint WHERE conname LIKE 'fk_cao_%%' "
                     "ORDER BY 1") == [("fk_cao_installation", False), ("fk_cao_marketplace_module", True)]
    again = run_playbook(MIGRATE, db, {"phase": 4, **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert applied(db) == ["1", "2", "3", "4"]
    assert_consistent(db)


@pytest.mark.parametrize("stage_copy", [4], indirect=True)
def test_migrate_killed_between_two_phases(stage_copy: dict[str, Any], tmp_path: Path) -> None:
    """-e phase=all killed right after phase 5 was recorded: the rerun skips 1 to 5 and applies
    6."""
    db = stage_copy
    run = Background(MIGRATE, db, {"phase": "all", **out_dirs_in(tmp_path)}, tmp_path / "killed")
    try:
        wait_for(lambda: "5" in applied(db), "phase 5 to finish", run, every=0.02)
        kill(run, db)
    finally:
        run.close()
    assert applied(db) == ["1", "2", "3", "4", "5"]
    again = run_playbook(MIGRATE, db, {"phase": "all", **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert "phase 5 already applied" in again.stdout
    assert applied(db) == ["1", "2", "3", "4", "5", "6"]
    assert_consistent(db)


# --- rollback.yml --------------------------------------------------------------------------------


@pytest.mark.parametrize("stage_copy", [4], indirect=True)
def test_rollback_killed_during_the_data_batches(staged: Staged, stage_copy: dict[str, Any], tmp_path: Path) -> None:
    """-e phase=data killed while it puts overrides back batch by batch: the ledger still says
    phase 3 is applied and shows the unfinished rollback; the rerun finishes it, and every
    override is exactly as before phase 3."""
    db = stage_copy
    planned = scalar(db, "SELECT count(*) FROM migration_ledger.phase3_override_plan")
    row = late_override(db, linked=True)
    blocker = holder(db, f"SELECT 1 FROM client_app_overrides WHERE id = '{row}' FOR UPDATE")
    run = Background(ROLLBACK, db, {"phase": "data", **out_dirs_in(tmp_path), **SMALL_ROLLBACK_BATCHES},
                     tmp_path / "killed")
    try:
        wait_for(lambda: scalar(db, "SELECT count(*) FROM migration_ledger.phase3_override_plan") < planned,
                 "the first batches to commit", run)
        time.sleep(0.5)
        kill(run, db)
        assert 0 < scalar(db, "SELECT count(*) FROM migration_ledger.phase3_override_plan") < planned
        assert unfinished(db) == [("3", "rollback", "running")]
        assert applied(db) == ["1", "2", "3", "4"]
    finally:
        blocker.rollback()
        blocker.close()
        run.close()
    again = run_playbook(ROLLBACK, db, {"phase": "data", **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert "unfinished runs" in again.stdout
    assert applied(db) == ["1", "2", "4"]
    assert db_snapshot(db)["data"]["public.client_app_overrides"] == \
        staged.snapshots[2]["data"]["public.client_app_overrides"]
    assert scalar(db, "SELECT count(*) FROM orchestration_workflows") == 0
    assert unfinished(db) == []


@pytest.mark.parametrize("stage_copy", [4], indirect=True)
def test_full_rollback_killed_changes_nothing_until_rerun(staged: Staged, stage_copy: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """-e phase=all runs in one transaction: killed while it waits for a lock, it has changed
    nothing but the ledger's record of the attempt; the rerun rolls everything back."""
    db = stage_copy
    before = db_snapshot(db)
    blocker = holder(db, "SELECT count(*) FROM handover_packages")
    run = Background(ROLLBACK, db, {"phase": "all", **out_dirs_in(tmp_path)}, tmp_path / "killed")
    try:
        wait_for(lambda: unfinished(db), "the rollback to start", run)
        time.sleep(1)
        kill(run, db)
    finally:
        blocker.rollback()
        blocker.close()
        run.close()
    after = db_snapshot(db)
    changed = [k for section in after for k in set(after[section]) | set(before[section])
               if after[section].get(k) != before[section].get(k) and "migration_ledger.history" not in k]
    assert changed == []
    assert unfinished(db) == [(p, "rollback", "running") for p in ("1", "2", "3", "4")]
    assert applied(db) == ["1", "2", "3", "4"]
    again = run_playbook(ROLLBACK, db, {"phase": "all", **out_dirs_in(tmp_path)})
    assert again.returncode == 0, playbook_output(again)
    assert applied(db) == []
    assert unfinished(db) == []
    strip = {"roles"}  # cluster-wide: the staged database created `authenticated` meanwhile
    assert fidelity_diff({k: v for k, v in staged.snapshots[0].items() if k not in strip},
                         {k: v for k, v in db_snapshot(db).items() if k not in strip}) == []
