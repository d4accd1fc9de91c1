"""How a run ended, in one field of its JSON report (`result`, docs/operations.md#how-a-run-ended):
completed, refused (nothing changed), failed (in which phase; the same command resumes), stopped
(an abort criterion or an alert; before which phase), each through a real run of migrate.yml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import db_snapshot, playbook_output, query, run_playbook, snapshot_diff

MIGRATE = "playbooks/migrate.yml"


def out_dirs(tmp_path: Path) -> dict[str, str]:
    return {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}


def the_report(tmp_path: Path) -> dict[str, Any]:
    reports = sorted((tmp_path / "reports").glob("*-migrate-testdb.json"))
    assert len(reports) == 1, reports
    return json.loads(reports[0].read_text())


def test_completed(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    result = run_playbook(MIGRATE, fresh_db, {"phase": 1, **out_dirs(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    report = the_report(tmp_path)
    assert (report["result"], report["result_phase"]) == ("completed", None)
    assert report["outcome"] == "succeeded"


def test_refused_changes_nothing_and_says_so(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    before = db_snapshot(fresh_db)
    result = run_playbook(MIGRATE, fresh_db, {"phase": 3, **out_dirs(tmp_path)})
    assert result.returncode == 2, playbook_output(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    report = the_report(tmp_path)
    assert (report["result"], report["result_phase"]) == ("refused", None)
    assert "Phase 3 needs phase(s) 1, 2 applied first" in report["reason"]
    assert "nothing was changed" in report["next"]


def test_refused_before_the_run_is_named(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """A bad phase is refused before connect.yml names the run: the report is written all the same."""
    result = run_playbook(MIGRATE, fresh_db, {"phase": "9", **out_dirs(tmp_path)})
    assert result.returncode == 2, playbook_output(result)
    assert the_report(tmp_path)["result"] == "refused"


def test_failed_names_the_phase_and_the_rerun_resumes(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    # Phase 1's backup cannot be written (a directory under a file): phase 1 fails.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    dirs = {**out_dirs(tmp_path), "migration_backup_dir": str(blocker / "backups")}
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **dirs})
    assert result.returncode == 2, playbook_output(result)
    report = the_report(tmp_path)
    assert (report["result"], report["result_phase"]) == ("failed", "1"), report["reason"]
    assert "run the same command" in report["next"]
    assert query(fresh_db, "SELECT count(*) FROM migration_ledger.history WHERE status = 'succeeded'") == [(0,)]


def test_stopped_by_an_alert(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    # Every sample is over a pool threshold of 0%, and alerts stop the run: the checkpoint before
    # phase 1 (the baseline) stops it.
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs(tmp_path),
                                              "migration_alert_pool_utilisation_pct": 0,
                                              "migration_alert_stops_run": True})
    assert result.returncode == 2, playbook_output(result)
    report = the_report(tmp_path)
    assert report["result"] == "stopped", report["reason"]
    assert report["result_phase"] == "1", report["reason"]
    succeeded = query(fresh_db, "SELECT phase FROM migration_ledger.history WHERE status = 'succeeded'")
    assert succeeded == [], report["reason"]
