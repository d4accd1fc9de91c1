"""Every refusal of playbooks/rollback.yml: it fails, says what to fix, and leaves the database
exactly as it was - catalog, data and ledger (nothing is recorded for a refused rollback).

They start from the staged database's templates (rollback_helpers.staged): the state after
phase 4 is enough to be refused for order, for the application's dependents, for approval.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    db_snapshot,
    drop_database,
    pgcluster,
    playbook_output,
    query,
    run_playbook,
    snapshot_diff,
)
from rollback_helpers import (
    ROLLBACK,
    Staged,
    applied,
    out_dirs_in,
)

Run = Callable[[], subprocess.CompletedProcess[str]]


@pytest.fixture
def at_phase4(staged: Staged) -> Iterator[dict[str, Any]]:
    """A copy of the staged database after phase 4 (phases 1-4 applied)."""
    db = staged.clone(4)
    try:
        yield db
    finally:
        drop_database(db)


def assert_refused(db: dict[str, Any], run: Run, *needles: str, ours: bool = True) -> str:
    """Run, and check: non-zero exit, every needle in the output, the database unchanged (the
    ledger included). `ours`: the refusal is the rollback's own, which says so."""
    before = db_snapshot(db)
    result = run()
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, playbook_output(result)
    for needle in needles:
        assert needle in text, f"{needle!r} not in output\n{playbook_output(result)}"
    if ours:
        assert "Nothing was changed" in text
    assert snapshot_diff(before, db_snapshot(db)) == [], "the refused rollback changed the database"
    return text


@pytest.mark.parametrize("phase", [7, "abc", ""])
def test_unknown_phase(at_phase4: dict[str, Any], tmp_path: Path, phase: Any) -> None:
    """An unknown phase is refused before anything is read, naming the valid ones."""
    assert_refused(
        at_phase4,
        lambda: run_playbook(ROLLBACK, at_phase4, {"phase": phase, **out_dirs_in(tmp_path)}),
        "Unknown phase", "-e phase=all", "-e phase=data",
    )


@pytest.mark.parametrize(("phase", "names"), [
    (3, "phase 3 cannot be rolled back while phase(s) 4 is applied"),
    (1, "phase 1 cannot be rolled back while phase(s) 4, 3, 2 are applied"),
])
def test_phase_other_phases_depend_on(at_phase4: dict[str, Any], tmp_path: Path, phase: int, names: str) -> None:
    """A phase that applied later phases depend on is refused, naming them and the order."""
    text = assert_refused(
        at_phase4,
        lambda: run_playbook(ROLLBACK, at_phase4, {"phase": phase, **out_dirs_in(tmp_path)}),
        names, "-e phase=4", "-e phase=all",
    )
    if phase == 3:
        assert "-e phase=data" in text
    assert applied(at_phase4) == ["1", "2", "3", "4"]


def test_database_never_migrated(staged: Staged, tmp_path: Path) -> None:
    """A database without a ledger (the wrong migration_db_name?) is refused."""
    db = staged.clone(0)
    try:
        assert_refused(
            db,
            lambda: run_playbook(ROLLBACK, db, {"phase": "all", **out_dirs_in(tmp_path)}),
            "has no migration ledger", "migration_db_name",
        )
    finally:
        drop_database(db)


def test_production_requires_approval(at_phase4: dict[str, Any], tmp_path: Path) -> None:
    """Production without approved_by is refused; with it the rollback runs and records the
    approver."""
    assert_refused(
        at_phase4,
        lambda: run_playbook(ROLLBACK, at_phase4, {"phase": 4, **out_dirs_in(tmp_path)}, env_name="production"),
        "approved_by",
    )
    result = run_playbook(ROLLBACK, at_phase4, {"phase": 4, "approved_by": "bob", **out_dirs_in(tmp_path)},
                          env_name="production")
    assert result.returncode == 0, playbook_output(result)
    assert query(at_phase4, "SELECT approved_by, environment FROM migration_ledger.history "
                            "WHERE direction = 'rollback'") == [("bob", "production")]


def test_application_objects_on_ours_are_named(at_phase4: dict[str, Any], tmp_path: Path) -> None:
    """The application's view on a column phase 2 added and its foreign key into a table phase 2
    created would be dropped by the strategy's CASCADE: the rollback names both and refuses."""
    query(at_phase4, """
        CREATE VIEW app_linked_overrides AS SELECT id, marketplace_module_id FROM client_app_overrides;
        CREATE TABLE app_workflow_notes (workflow_id uuid REFERENCES orchestration_workflows (id), note text);
        """)
    assert_refused(
        at_phase4,
        lambda: run_playbook(ROLLBACK, at_phase4, {"phase": "all", **out_dirs_in(tmp_path)}),
        "view app_linked_overrides depends on column marketplace_module_id of table client_app_overrides",
        "app_workflow_notes",
        "drops nothing with CASCADE",
    )


def test_unreachable_database(at_phase4: dict[str, Any], tmp_path: Path) -> None:
    """A port nobody listens on is reported as unreachable."""
    closed = {**at_phase4, "port": pgcluster.free_port()}
    assert_refused(
        at_phase4,
        lambda: run_playbook(ROLLBACK, closed, {"phase": "all", **out_dirs_in(tmp_path)}),
        "unreachable", "migration_db_port", ours=False,
    )


def test_read_only_database(at_phase4: dict[str, Any], tmp_path: Path) -> None:
    """A read-only database (a standby, or default_transaction_read_only) is refused."""
    query(at_phase4, f'ALTER DATABASE "{at_phase4["dbname"]}" SET default_transaction_read_only = on')
    assert_refused(
        at_phase4,
        lambda: run_playbook(ROLLBACK, at_phase4, {"phase": "all", **out_dirs_in(tmp_path)}),
        "read-only", ours=False,
    )


# --- the plan's order rule, without a database ---------------------------------------------------


def rollback_module() -> Any:
    """plugins/modules/pgmigrate_rollback.py, importable outside Ansible."""
    from helpers import plugin

    return plugin("modules", "pgmigrate_rollback")


GRAPH = {str(n): {"requires": [str(r) for r in range(1, n)]} for n in range(1, 7)}


@pytest.mark.parametrize(("targets", "present", "expected"), [
    (["3"], ["1", "2", "3", "4", "5", "6"], "phase 3 cannot be rolled back while phase(s) 6, 5, 4 are applied"),
    (["2"], ["1", "2", "4", "5", "6"], "phase 2 cannot be rolled back while phase(s) 6, 5, 4 are applied"),
    (["6", "5"], ["1", "2", "3", "4", "5", "6"], None),
    (["3", "2", "1"], ["1", "2", "3"], None),
    (["4"], ["1", "2", "3", "4"], None),
])
def test_order_rule(targets: list[str], present: list[str], expected: str | None) -> None:
    """A phase goes only when no present phase outside the selection depends on it; the refusal
    names the phases and the order (phase 3 also names -e phase=data)."""
    message = rollback_module().refuse_dependents(targets, present, GRAPH)
    if expected is None:
        assert message is None
    else:
        assert expected in message and "Nothing was changed" in message
        assert ("-e phase=data" in message) == (targets == ["3"])


def test_second_rollback_at_the_same_time_is_refused(at_phase4: dict[str, Any], tmp_path: Path) -> None:
    """While another session holds the database's run lock, a rollback is refused, naming the
    session (tests/test_runlock.py covers real runs side by side)."""
    from helpers import connect

    running = connect(at_phase4)
    running.autocommit = True
    try:
        with running.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s), pg_backend_pid()", (0x70676D6967726174,))
            pid = cur.fetchone()[1]
        before = db_snapshot(at_phase4)
        result = run_playbook(ROLLBACK, at_phase4, {"phase": 4, **out_dirs_in(tmp_path)})
        text = " ".join(result.stdout.split())
        assert result.returncode != 0 and "is locked by another run" in text, playbook_output(result)
        assert f"session pid {pid}" in text and "application_name pytest" in text, playbook_output(result)
        assert snapshot_diff(before, db_snapshot(at_phase4)) == []
    finally:
        running.close()
