"""playbooks/brief.yml (strategy 2.2): the pre-migration briefing, against the real test cluster.

A database without a rehearsal gets size-based estimates, marked as such; after a real rehearsal
of its clone (playbooks/rehearse.yml on a staging database of the same cluster) the briefing
carries that rehearsal's durations. Either way the briefing is read-only: the database's
fingerprint is the same before and after, and no ledger appears.
"""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from helpers import REPO_ROOT, db_snapshot, drop_database, ledger_exists, run_playbook, snapshot_diff
from rehearsal_helpers import out_of, run_with_inventory, two_host_inventory

BRIEF = "playbooks/brief.yml"
sys.path.insert(0, str(REPO_ROOT / "tools"))
webhook_receiver = importlib.import_module("webhook_receiver")


def briefing_of(report_dir: Path) -> tuple[dict[str, Any], str]:
    found = sorted(report_dir.glob("*-brief-*-briefing.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text()), found[0].with_suffix(".md").read_text()


def test_brief_without_rehearsal_estimates_and_changes_nothing(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    before = db_snapshot(fresh_db)
    with webhook_receiver.WebhookReceiver(tmp_path / "hook") as hook:
        result = run_playbook(BRIEF, fresh_db, {
            "migration_report_dir": str(tmp_path / "reports"), "migration_window_start": "2030-01-02T22:00Z",
            "migration_notify_webhook_url": hook.url})
        messages = hook.messages()
    assert result.returncode == 0, out_of(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    assert not ledger_exists(fresh_db)
    briefing, md = briefing_of(tmp_path / "reports")
    assert briefing["rehearsal"] is None
    assert {p["source"] for p in briefing["phases"]} == {"estimate"}
    assert "No rehearsal of this database's clone was found" in md and "**estimate**" in md
    assert briefing["window"]["start"] == "2030-01-02T22:00:00+00:00"
    assert briefing["signoffs_missing"] == ["DBA", "Backend lead", "DevOps lead", "Product owner"]
    assert briefing["delete_rules"]["overrides_linkable_to_installation"] > 0
    assert "deleting a module installation deletes the client's override" in md
    assert "playbooks/rollback.yml -e phase=all" in md
    # Printed, and sent: the webhook got the briefing with its text.
    assert "Pre-migration briefing: testdb" in result.stdout
    sent = [m for m in messages if m["event"] == "briefing"]
    assert len(sent) == 1 and "size-based ESTIMATES" in sent[0]["text"]
    assert sent[0]["details"]["briefing"] == md


def test_brief_refuses_a_bad_window(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    result = run_playbook(BRIEF, fresh_db, {"migration_report_dir": str(tmp_path / "reports"),
                                            "migration_window_start": "next tuesday"})
    assert result.returncode != 0
    assert "is not a date and time: give ISO 8601" in out_of(result)
    assert not list((tmp_path / "reports").glob("*-briefing.*"))


def test_brief_takes_the_rehearsals_durations_and_the_signoffs(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    staging = {**fresh_db, "dbname": f"staging_{uuid.uuid4().hex[:10]}"}
    reports = tmp_path / "reports"
    inventory = two_host_inventory(fresh_db, staging)
    out = {"migration_report_dir": str(reports), "migration_backup_dir": str(tmp_path / "backups")}
    try:
        rehearsed = run_with_inventory("playbooks/rehearse.yml", inventory, out, ["--limit", "staging"])
        assert rehearsed.returncode == 0, out_of(rehearsed)
        signed = run_with_inventory("playbooks/approve.yml", inventory, {
            **out, "approval_role": "DBA", "approved_by": "Jane Doe"}, ["--limit", "prod"])
        assert signed.returncode == 0, out_of(signed)
        before = db_snapshot(fresh_db)
        result = run_with_inventory(BRIEF, inventory, {
            **out, "migration_required_approvals": ["DBA", "Backend lead"],
            "migration_window_start": "2030-01-02 22:00"}, ["--limit", "prod"])
        assert result.returncode == 0, out_of(result)
        assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    finally:
        drop_database(staging)
    rehearsal = json.loads(next(reports.glob("*-rehearsal.json")).read_text())
    briefing, md = briefing_of(reports)
    assert briefing["rehearsal"]["verdict"] == "go"
    assert [(p["phase"], p["source"], p["seconds"]) for p in briefing["phases"]] == [
        (p["phase"], "rehearsal", float(p["duration_s"])) for p in rehearsal["phases"]]
    assert "Durations from the latest rehearsal of this database's clone" in md
    sheet = {s["role"]: (s["state"], s["required"]) for s in briefing["signoffs"]}
    assert sheet["DBA"] == ("go", True) and sheet["Backend lead"] == ("missing", True)
    assert sheet["Product owner"] == ("missing", False)
    # Production: the rollback commands carry the approver, as migrate.yml requires.
    assert "rollback.yml -e phase=all -e approved_by=NAME --limit prod" in md
