"""playbooks/rehearse.yml end to end, with two real clusters (production, staging): a healthy
source gives go, a source where a phase must fail gives no-go naming the cause, a failed
validation and a monitoring alert give no-go with the first reason while the rollback still
restores the clone exactly; the source is identical before and after every run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rehearsal_helpers
from helpers import db_snapshot, plugin, query, snapshot_diff
from rehearsal_helpers import (
    out_of,
    output_dirs,
    run_with_inventory,
    two_host_inventory,
)

# The staging server's fixtures (rehearsal_helpers), used by name.
staging_cluster = rehearsal_helpers.staging_cluster
staging_db = rehearsal_helpers.staging_db

REHEARSE = "playbooks/rehearse.yml"
PHASES = ["1", "2", "3", "4", "5", "6"]
KEPT = ("migration_ledger.", "public.migration_backup_")


def rehearse(source: dict[str, Any], staging: dict[str, Any], tmp_path: Path, **extra: Any):
    return run_with_inventory(REHEARSE, two_host_inventory(source, staging), {**output_dirs(tmp_path), **extra})


def reports(tmp_path: Path) -> tuple[dict[str, Any], str]:
    [json_file] = list((tmp_path / "reports").glob("*-staging-rehearse-staging-rehearsal.json"))
    return json.loads(json_file.read_text()), json_file.with_suffix(".md").read_text()


def outside_migration(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without the ledger, the backup tables and the cluster's roles (the two servers'
    roles differ by nature)."""
    return {section: {k: v for k, v in values.items() if not k.startswith(KEPT) and k != "migration_ledger"}
            for section, values in snapshot.items() if section != "roles"}


def test_healthy_source_gives_go(fresh_db: dict[str, Any], staging_db: dict[str, Any], tmp_path: Path) -> None:
    before = db_snapshot(fresh_db)
    result = rehearse(fresh_db, staging_db, tmp_path)
    assert result.returncode == 0, out_of(result)
    assert "staging: GO" in out_of(result)
    report, md = reports(tmp_path)
    assert report["verdict"] == "go" and report["reason"] == "" and report["reasons"] == []
    assert [p["phase"] for p in report["phases"]] == PHASES
    assert all(p["status"] == "succeeded" and p["duration_s"] is not None for p in report["phases"])
    assert report["phases"][0]["rows"] > 0 and report["phases"][2]["rows"] > 0
    # Each file's measured seconds, which playbooks/plan.yml shows as the expected durations.
    schema_steps = report["phases"][1]["steps"]
    assert [Path(x["file"]).name for x in schema_steps][:2] == ["005_record_created.sql", "010_columns.sql"]
    assert all(x["seconds"] >= 0 for x in schema_steps), schema_steps
    assert all({"lock_retries", "sessions_waiting_max", "longest_wait_s"} <= p["lock_waits"].keys()
               for p in report["phases"])
    assert report["validation"]["passed"] and len(report["validation"]["checks"]) > 10
    assert report["alerts"] == []
    assert [r["phase"] for r in report["rollback_phases"]] == list(reversed(PHASES))
    assert all(r["status"] == "succeeded" for r in report["rollback_phases"])
    assert report["fidelity"]["holds"] is True and report["fidelity"]["difference_count"] == 0
    assert report["clone"]["rows"] == sum(report["clone"]["row_counts"].values()) > 0
    assert report["clone"]["row_counts"] == report["clone"]["clone_row_counts"]
    assert md.startswith("# Rehearsal on staging: GO") and "| 3 | DATA" in md and "Holds" in md
    # The source only read, and the staging database back to the clone (the ledger and the
    # backup tables aside).
    after = db_snapshot(fresh_db)
    assert snapshot_diff(before, after) == [], "the rehearsal changed the source"
    assert snapshot_diff(outside_migration(before), outside_migration(db_snapshot(staging_db))) == []
    # The run report of roles/report, beside it, carries the verdict; no completion announcement.
    [run_report] = list((tmp_path / "reports").glob("*-staging-rehearse-staging.json"))
    assert json.loads(run_report.read_text())["extra"]["rehearsal"]["verdict"] == "go"
    assert not list((tmp_path / "reports").glob("*announcement*"))
    for path in (tmp_path / "reports").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert fresh_db["password"] not in text and staging_db["password"] not in text, path
    assert fresh_db["password"] not in out_of(result) and staging_db["password"] not in out_of(result)


def test_broken_source_gives_no_go_naming_the_cause(fresh_db: dict[str, Any], staging_db: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """A pre-existing integration_events table of another shape: phase 2 could never run. The
    rehearsal says no-go and why, fails (a pipeline stops there), and the source is untouched."""
    query(fresh_db, "CREATE TABLE integration_events (id bigint PRIMARY KEY, payload text)")
    before = db_snapshot(fresh_db)
    result = rehearse(fresh_db, staging_db, tmp_path)
    assert result.returncode != 0
    assert "NO-GO" in out_of(result) and "integration_events" in out_of(result)
    report, md = reports(tmp_path)
    assert report["verdict"] == "no-go"
    assert "integration_events" in report["reason"] and "another shape" in report["reason"]
    assert md.startswith("# Rehearsal on staging: NO-GO")
    assert report["fidelity"]["holds"] is True
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [], "the rehearsal changed the source"


def test_failed_validation_and_an_alert_give_no_go_with_the_first_reason(
        fresh_db: dict[str, Any], staging_db: dict[str, Any], tmp_path: Path) -> None:
    """An impossible p95 target fails phase 6; a zero pool threshold raises monitoring alerts. The
    verdict names the validation first and lists the alerts; the full rollback still restores the
    clone exactly; with rehearse_fail_on_no_go=false the run itself succeeds."""
    before = db_snapshot(fresh_db)
    result = rehearse(fresh_db, staging_db, tmp_path, phase6_validate_p95_target_ms=0,
                      migration_alert_pool_utilisation_pct=0, rehearse_fail_on_no_go=False)
    assert result.returncode == 0, out_of(result)
    report, _ = reports(tmp_path)
    assert report["verdict"] == "no-go"
    assert report["reason"].startswith("validation failed") and "p95" in report["reason"]
    assert any("monitoring alert" in r for r in report["reasons"][1:])
    assert report["alerts"]
    assert [p["status"] for p in report["phases"]] == ["succeeded"] * 5 + ["failed"]
    assert report["validation"]["passed"] is False
    assert report["fidelity"]["holds"] is True
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_masked_rehearsal(fresh_db: dict[str, Any], staging_db: dict[str, Any], tmp_path: Path) -> None:
    """With clone_mask_personal_data the rehearsal runs on masked data (go), the source keeps its."""
    before = db_snapshot(fresh_db)
    result = rehearse(fresh_db, staging_db, tmp_path, clone_mask_personal_data=True, clone_mask_salt="s4lt")
    assert result.returncode == 0, out_of(result)
    report, md = reports(tmp_path)
    assert report["verdict"] == "go", report["reasons"]
    clients = query(fresh_db, "SELECT count(*) FROM clients_enhanced")[0][0]
    assert report["clone"]["masked"] == {"public.clients_enhanced": clients}
    assert "Personal data masked" in md
    names = query(staging_db, "SELECT name, email FROM clients_enhanced LIMIT 5")
    assert all(n.startswith("Client ") and len(n) == 19 and e.endswith("@example.invalid") for n, e in names)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_refused_rehearsal_changes_nothing(fresh_db: dict[str, Any], staging_db: dict[str, Any],
                                           tmp_path: Path) -> None:
    """A staging host marked production is refused before anything changes, without a report."""
    before = db_snapshot(fresh_db)
    inventory = two_host_inventory(fresh_db, staging_db, staging_env="production")
    result = run_with_inventory(REHEARSE, inventory, output_dirs(tmp_path))
    assert result.returncode != 0
    assert "never targets production" in out_of(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").rglob("*.json"))


# --- the verdict, as a unit ---------------------------------------------------------------------

def load_rehearsal() -> Any:
    return plugin("modules", "pgmigrate_rehearsal")


def applied(*statuses: str) -> list[dict[str, Any]]:
    return [{"phase": str(i), "status": s, "error": None if s == "succeeded" else "boom"}
            for i, s in enumerate(statuses, 1)]


@pytest.fixture(scope="module")
def judge() -> Any:
    return load_rehearsal().judge


def params(**overrides: Any) -> dict[str, Any]:
    base = {"phase_titles": {"3": "DATA"}, "clone": {"rows": 1}, "failure": {}, "stop": {}, "rollback": {},
            "fidelity": {"holds": True, "difference_count": 0}, "phases": PHASES}
    return {**base, **overrides}


OK = applied(*["succeeded"] * 6)
VALID = {"passed": True, "failed": []}


def test_verdict_go_only_when_everything_holds(judge: Any) -> None:
    assert judge(params(), OK, OK, VALID, [], []) == []


@pytest.mark.parametrize(("overrides", "records", "valid", "alerts", "first"), [
    ({"clone": {"failed": True, "msg": "no space"}}, [], None, [], "the clone failed: no space"),
    ({"failure": {"phase": "preflight", "msg": "table x"}}, [], None, [], "the migration's preflight refused"),
    ({}, applied("succeeded", "succeeded", "failed"), None, [], "phase 3 (DATA) failed: boom"),
    ({}, OK, {"passed": False, "failed": ["linkage.complete"]}, [], "validation failed: linkage.complete"),
    ({}, OK, VALID, [{"phase": "3", "message": "p95 high"}], "1 monitoring alert(s) fired: phase 3: p95 high"),
    ({"rollback": {"failed": True, "msg": "dependents"}}, OK, VALID, [], "the full rollback failed: dependents"),
    ({"fidelity": {"holds": False, "difference_count": 2, "differences": ["columns x: gone"]}}, OK, VALID, [],
     "rollback fidelity does not hold: 2 difference(s)"),
    ({"fidelity": {}}, OK, VALID, [], "the rollback's fidelity was not checked"),
    ({}, applied(*["succeeded"] * 4), None, [], "the validator did not run"),
])
def test_verdict_no_go_names_the_first_reason(judge: Any, overrides: dict, records: list, valid: Any,
                                              alerts: list, first: str) -> None:
    reasons = judge(params(**overrides), records, [], valid, alerts, [])
    assert reasons and reasons[0].startswith(first), reasons


def test_verdict_counts_phases_already_applied_in_the_source(judge: Any) -> None:
    reasons = judge(params(), applied(*["succeeded"] * 6)[2:], [], VALID, [], ["1", "2"])
    assert reasons[0].startswith("phase(s) 1, 2 were already applied in the source")


def test_a_failed_clone_is_a_no_go_and_leaves_staging_alone(fresh_db: dict[str, Any], staging_db: dict[str, Any],
                                                            tmp_path: Path) -> None:
    """Masked e-mail addresses break a CHECK constraint of the source: the clone fails before its
    swap, the verdict is no-go naming the clone, no phase ran, and nothing changed anywhere."""
    query(fresh_db, "ALTER TABLE clients_enhanced ADD CONSTRAINT email_domain CHECK (email LIKE '%.example')")
    before = db_snapshot(fresh_db)
    result = rehearse(fresh_db, staging_db, tmp_path, clone_mask_personal_data=True)
    assert result.returncode != 0
    report, _ = reports(tmp_path)
    assert report["verdict"] == "no-go" and report["reason"].startswith("the clone failed")
    assert "email_domain" in report["reason"] and report["phases"] == []
    assert not rehearsal_helpers.database_exists(staging_db)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_check_mode_rehearses_nothing(fresh_db: dict[str, Any], staging_db: dict[str, Any], tmp_path: Path) -> None:
    before = db_snapshot(fresh_db)
    result = run_with_inventory(REHEARSE, two_host_inventory(fresh_db, staging_db), output_dirs(tmp_path),
                                check=True)
    assert result.returncode == 0, out_of(result)
    assert "Check mode: the rehearsal would replace" in out_of(result)
    assert not rehearsal_helpers.database_exists(staging_db)
    assert not (tmp_path / "reports").exists()
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
