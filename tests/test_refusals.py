"""Every refusal of playbooks/migrate.yml: it fails, says what to fix, and leaves the database
exactly as it was (same catalog and data, no migration_ledger schema where there was none)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    copy_repository,
    db_snapshot,
    ledger_exists,
    pgcluster,
    playbook_output,
    query,
    run_playbook,
    run_playbook_at,
    snapshot_diff,
)

MIGRATE = "playbooks/migrate.yml"
Run = Callable[[], subprocess.CompletedProcess[str]]


@pytest.fixture
def out_dirs(tmp_path: Path) -> dict[str, str]:
    """Backup and report directories of the run, kept out of the repository."""
    return {
        "migration_backup_dir": str(tmp_path / "backups"),
        "migration_report_dir": str(tmp_path / "reports"),
    }


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_refused(db: dict[str, Any], run: Run, *needles: str, ledger_before: bool = False) -> str:
    """Run, and check: non-zero exit, every needle in the output, database unchanged."""
    before = db_snapshot(db)
    result = run()
    after = db_snapshot(db)
    text = output_of(result)
    assert result.returncode != 0, playbook_output(result)
    for needle in needles:
        assert needle in text, f"{needle!r} not in output\n{playbook_output(result)}"
    assert snapshot_diff(before, after) == [], "the refused run changed the database"
    assert ledger_exists(db) is ledger_before
    return text


@pytest.mark.parametrize("phase", [7, "abc", "0", ""])
def test_unknown_phase(fresh_db: dict[str, Any], out_dirs: dict[str, str], phase: Any) -> None:
    """An unknown phase is refused as such, naming the valid values."""
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": phase, **out_dirs}),
        "Unknown phase",
        "phase=all",
    )


@pytest.mark.parametrize(("phase", "missing"), [(3, "1, 2"), (6, "1, 2, 3, 4, 5")])
def test_phase_out_of_order(fresh_db: dict[str, Any], out_dirs: dict[str, str], phase: int, missing: str) -> None:
    """A phase on a fresh database is refused, naming the missing phases in order and phase 1
    as the one to run first."""
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": phase, **out_dirs}),
        f"needs phase(s) {missing} applied first",
        "-e phase=1 ",
    )


def test_unreachable_database(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A port nobody listens on is reported as unreachable, naming the host/port variables."""
    closed = {**fresh_db, "port": pgcluster.free_port()}
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, closed, {"phase": "all", **out_dirs}),
        "unreachable",
        "migration_db_port",
    )


def test_wrong_password(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A wrong password is reported as wrong credentials and never printed."""
    wrong_password = "wrong-Pw-4d1f0c9e"
    wrong = {**fresh_db, "password": wrong_password}
    text = assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, wrong, {"phase": "all", **out_dirs}),
        "wrong credentials",
        "migration_db_password",
    )
    assert wrong_password not in text
    assert fresh_db["password"] not in text


def test_read_only_database(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A database with default_transaction_read_only on is refused as read-only."""
    query(fresh_db, f'ALTER DATABASE "{fresh_db["dbname"]}" SET default_transaction_read_only = on')
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs}),
        "read-only",
        "default_transaction_read_only",
    )


def test_missing_prerequisite_table(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """Without client_deployments the run is refused, naming public.client_deployments."""
    query(fresh_db, "DROP TABLE client_deployments")
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs}),
        "public.client_deployments",
    )


def test_missing_prerequisite_column(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """Without clients_enhanced.name the run is refused, naming that column."""
    query(fresh_db, "ALTER TABLE clients_enhanced RENAME COLUMN name TO display_name")
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs}),
        "clients_enhanced.name",
    )


def test_conflicting_table_shape(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A table phase 2 would create, present with another shape, is refused by name."""
    query(fresh_db, "CREATE TABLE integration_events (id int, foo text)")
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs}),
        "integration_events",
        "another shape",
    )


def test_production_requires_approval(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """Production without approved_by is refused; with it, phase 1 runs and records the approver."""
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": 1, **out_dirs}, env_name="production"),
        "approved_by",
    )
    result = run_playbook(MIGRATE, fresh_db, {"phase": 1, "approved_by": "alice", **out_dirs}, env_name="production")
    assert result.returncode == 0, playbook_output(result)
    rows = query(
        fresh_db,
        "SELECT approved_by, environment FROM migration_ledger.history WHERE phase = '1' AND status = 'succeeded'",
    )
    assert rows == [("alice", "production")]


def test_drift_is_refused(fresh_db: dict[str, Any], out_dirs: dict[str, str], tmp_path: Path) -> None:
    """A changed SQL file of an applied phase is refused as drift, naming the file."""
    for phase in (1, 2):
        result = run_playbook(MIGRATE, fresh_db, {"phase": phase, **out_dirs})
        assert result.returncode == 0, playbook_output(result)
    repo = copy_repository(tmp_path / "repo")
    edited = repo / "migrations/ht036/phase2/deploy/020_tables.sql"
    edited.write_text(edited.read_text() + "-- an innocent-looking edit\n")
    text = assert_refused(
        fresh_db,
        lambda: run_playbook_at(repo, MIGRATE, fresh_db, {"phase": 2, **out_dirs}),
        "drift",
        "ht036/phase2/deploy/020_tables.sql",
        ledger_before=True,
    )
    assert "ht036/phase2/deploy/010_columns.sql" not in text


def test_unchanged_copy_is_no_drift(fresh_db: dict[str, Any], out_dirs: dict[str, str], tmp_path: Path) -> None:
    """Control for the drift test: the same files from another directory are not drift."""
    result = run_playbook(MIGRATE, fresh_db, {"phase": 1, **out_dirs})
    assert result.returncode == 0, playbook_output(result)
    repo = copy_repository(tmp_path / "repo")
    before = db_snapshot(fresh_db)
    again = run_playbook_at(repo, MIGRATE, fresh_db, {"phase": 1, **out_dirs})
    assert again.returncode == 0, playbook_output(again)
    assert "drift" not in output_of(again)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_check_mode_changes_nothing(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """--check -e phase=all on a fresh database succeeds and changes nothing, files included."""
    before = db_snapshot(fresh_db)
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs}, check=True)
    assert result.returncode == 0, playbook_output(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    assert not ledger_exists(fresh_db)
    backups = Path(out_dirs["migration_backup_dir"])
    assert not backups.exists() or not any(p.is_file() for p in backups.rglob("*"))


# --- more bad input (issue 13) ------------------------------------------------------------


def test_database_does_not_exist(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A database name that does not exist is refused as such, and none is created."""
    missing = {**fresh_db, "dbname": fresh_db["dbname"] + "_missing"}
    databases = query(fresh_db, "SELECT count(*) FROM pg_database")
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, missing, {"phase": "all", **out_dirs}),
        "the database does not exist",
        "migration_db_name",
    )
    assert query(fresh_db, "SELECT count(*) FROM pg_database") == databases
    assert query(fresh_db, "SELECT count(*) FROM pg_database WHERE datname = %s", (missing["dbname"],)) == [(0,)]


def test_login_without_create_on_the_schema(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A login that owns the application's tables and may create schemas, but not create in
    `public`: refused by the preflight, naming the GRANT that fixes it."""
    role = "no_create_" + fresh_db["dbname"][-8:]
    query(fresh_db, f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
    try:
        for (table,) in query(fresh_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
            query(fresh_db, f"ALTER TABLE public.{table} OWNER TO {role}")
        query(fresh_db, f'GRANT CREATE ON DATABASE "{fresh_db["dbname"]}" TO {role}')
        login = {**fresh_db, "user": role, "password": f"pw-{role}"}
        assert_refused(
            fresh_db,
            lambda: run_playbook(MIGRATE, login, {"phase": "all", **out_dirs}),
            f"login {role} lacks CREATE on schema public",
            f"GRANT CREATE ON SCHEMA public TO {role}",
            "Nothing was changed",
        )
    finally:
        query(fresh_db, f"REASSIGN OWNED BY {role} TO {fresh_db['user']}")
        query(fresh_db, f"DROP OWNED BY {role}")
        query(fresh_db, f"DROP ROLE {role}")


@pytest.mark.parametrize(("phase", "hint"), [
    ("1,2", "one phase per run (-e phase=1, then -e phase=2)"),
    (" 3", "no spaces around it (-e phase=3)"),
    ("all ", "no spaces around it (-e phase=all)"),
])
def test_phase_list_or_spaces(fresh_db: dict[str, Any], out_dirs: dict[str, str], phase: str, hint: str) -> None:
    """A list of phases, or a phase with spaces, is refused, saying what was meant."""
    assert_refused(
        fresh_db,
        lambda: run_playbook(MIGRATE, fresh_db, {"phase": phase, **out_dirs}),
        "Unknown phase",
        hint,
    )


def test_rollback_phase_list_or_spaces(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    assert_refused(
        fresh_db,
        lambda: run_playbook("playbooks/rollback.yml", fresh_db, {"phase": " 4", **out_dirs}),
        "no spaces around it (-e phase=4)",
    )


APPROVER = """Jane "JD" O'Brien'); DROP TABLE clients_enhanced; --"""


def test_approver_with_quotes_and_semicolon(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """An approver's name with quotes and a semicolon is data: recorded exactly as given, in
    the ledger and on the sign-off sheet, and nothing else happens."""
    result = run_playbook(MIGRATE, fresh_db, {"phase": 1, "approved_by": APPROVER, **out_dirs},
                          env_name="production")
    assert result.returncode == 0, playbook_output(result)
    assert query(fresh_db, "SELECT approved_by FROM migration_ledger.history WHERE phase = '1'") == [(APPROVER,)]
    signed = run_playbook("playbooks/approve.yml", fresh_db, {
        "approval_role": "DBA", "approved_by": APPROVER, "approval_note": "ok'; --", **out_dirs},
        env_name="production")
    assert signed.returncode == 0, playbook_output(signed)
    assert query(fresh_db, "SELECT name, note FROM migration_ledger.approvals") == [(APPROVER, "ok'; --")]
    assert query(fresh_db, "SELECT to_regclass('public.clients_enhanced') IS NOT NULL") == [(True,)]


def test_hot_standby(tmp_path: Path, out_dirs: dict[str, str]) -> None:
    """A real hot standby (pg_basebackup -R, in recovery) as the target: refused as read-only,
    pointing at the primary; the standby and the primary are as they were."""
    from helpers import make_cluster_tempdir

    base = make_cluster_tempdir("pgm-standby-")
    primary = pgcluster.start_cluster(base / "primary")
    try:
        pgcluster.seed_database(primary, "agency", 30)
        standby = pgcluster.start_standby(primary, base / "standby")
        source = {**primary, "dbname": "agency"}
        replica = {**standby, "dbname": "agency"}
        assert query(replica, "SELECT pg_is_in_recovery()") == [(True,)]
        before = db_snapshot(source)
        text = assert_refused(
            replica,
            lambda: run_playbook(MIGRATE, replica, {"phase": "all", **out_dirs}),
            "is read-only (it is a standby in recovery)",
            "point migration_db_host at the primary",
        )
        assert "Traceback" not in text
        assert snapshot_diff(before, db_snapshot(source)) == []
    finally:
        for name in ("standby", "primary"):
            pgcluster.destroy_cluster(base / name)
        subprocess.run(["rm", "-rf", str(base)], check=False)
