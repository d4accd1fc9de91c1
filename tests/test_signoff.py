"""The sign-off sheet as data (strategy section 8): playbooks/approve.yml records decisions in
migration_ledger.approvals; a production run with migration_required_approvals needs a recent
'go' of every listed role, refuses before anything changes otherwise, and records who approved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import db_snapshot, playbook_output, query, run_playbook, snapshot_diff

MIGRATE = "playbooks/migrate.yml"
APPROVE = "playbooks/approve.yml"
ROLES = ["DBA", "Backend lead", "DevOps lead", "Product owner"]


@pytest.fixture
def out_dirs(tmp_path: Path) -> dict[str, str]:
    return {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}


def approve(db: dict[str, Any], role: str, name: str, decision: str = "go") -> None:
    result = run_playbook(APPROVE, db, {"approval_role": role, "approved_by": name, "approval_decision": decision},
                          env_name="production")
    assert result.returncode == 0, playbook_output(result)


def test_unknown_role_is_refused_before_anything_changes(fresh_db: dict[str, Any]) -> None:
    before = db_snapshot(fresh_db)
    result = run_playbook(APPROVE, fresh_db, {"approval_role": "Intern", "approved_by": "Kim"}, env_name="production")
    assert result.returncode != 0
    assert "Product owner" in result.stdout and "Nothing was changed" in result.stdout
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_production_needs_every_required_approval(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    required = {"migration_required_approvals": ROLES, **out_dirs}
    before = db_snapshot(fresh_db)
    refused = run_playbook(MIGRATE, fresh_db, {"phase": 1, **required}, env_name="production")
    assert refused.returncode != 0
    assert "no approval recorded for DBA, Backend lead, DevOps lead, Product owner" in refused.stdout
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []

    for role, name in zip(ROLES[:3], ["Jane", "Bob", "Ada"], strict=True):
        approve(fresh_db, role, name)
    approve(fresh_db, "product owner", "Sam", decision="no-go")  # case-insensitive role names
    still = run_playbook(MIGRATE, fresh_db, {"phase": 1, **required}, env_name="production")
    assert still.returncode != 0 and "no-go from Product owner Sam" in still.stdout

    approve(fresh_db, "Product owner", "Sam")  # the latest decision counts
    result = run_playbook(MIGRATE, fresh_db, {"phase": 1, **required}, env_name="production")
    assert result.returncode == 0, playbook_output(result)
    approved_by, details = query(
        fresh_db, "SELECT approved_by, details FROM migration_ledger.history WHERE phase = '1' AND status = 'succeeded'"
    )[0]
    assert approved_by == "DBA: Jane; Backend lead: Bob; DevOps lead: Ada; Product owner: Sam"
    assert [a["role"] for a in details["approvals"]] == ROLES
    assert all(a["recorded_at"] and a["decision"] == "go" for a in details["approvals"])
    # Three runs wrote a report each (named by run id, in no order): the last one is the approved run's.
    reports = Path(out_dirs["migration_report_dir"]).glob("*-production-migrate-testdb.md")
    report = max(reports, key=lambda p: p.stat().st_mtime_ns).read_text()
    assert "| pre | Product owner | Sam | go |" in report


def test_no_go_between_phases_stops_the_run(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A no-go recorded after the run started stops it at the next go/no-go checkpoint."""
    for role in ROLES:
        approve(fresh_db, role, "Someone")
    required = {"migration_required_approvals": ROLES, **out_dirs}
    assert run_playbook(MIGRATE, fresh_db, {"phase": 1, **required}, env_name="production").returncode == 0
    approve(fresh_db, "DevOps lead", "Ada", decision="no-go")
    # The sheet is read again before phase 2 starts: connect refuses first, nothing runs.
    stopped = run_playbook(MIGRATE, fresh_db, {"phase": "all", **required}, env_name="production")
    assert stopped.returncode != 0 and "no-go from DevOps lead Ada" in stopped.stdout
    assert query(fresh_db, "SELECT count(*) FROM migration_ledger.history WHERE phase = '2'") == [(0,)]
