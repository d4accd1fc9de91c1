"""The review plan (playbooks/plan.yml, migrate.yml --check; docs/writing-a-migration.md#the-review-plan):
per step the rows of the tables it locks as the planner estimates them (pg_class.reltuples of a
real database), the expected duration (measured by the ledger or a rehearsal report, else the
size model, marked), squawk's findings for its file; and the plan's checksum, the one a signed
sign-off signs: stable across runs and checkouts, changed by a step's file or its manifest entry."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from helpers import (
    REPO_ROOT,
    TEST_HOST,
    copy_repository,
    db_snapshot,
    ledger_exists,
    playbook_output,
    plugin,
    query,
    run_playbook,
    run_playbook_at,
    snapshot_diff,
)

PLAN = "playbooks/plan.yml"
NO_DB = {"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "user": "nobody", "password": ""}
plan_utils = plugin("module_utils", "pgmigrate_plan")


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def run_plan(db: dict[str, Any], reports: Path, repo: Path = REPO_ROOT, check: bool = False,
             **extra: Any) -> tuple[Any, dict[str, Any]]:
    result = run_playbook_at(repo, PLAN, db, {"migration_report_dir": str(reports), **extra}, check=check)
    files = list(reports.glob("*-plan-*.json"))
    return result, (json.loads(files[0].read_text()) if len(files) == 1 else {})


def copy_with_squawk_config(tmp_path: Path) -> Path:
    repo = copy_repository(tmp_path / "repo")
    shutil.copy2(REPO_ROOT / ".squawk.toml", repo / ".squawk.toml")
    return repo


def step(plan: dict[str, Any], file: str) -> dict[str, Any]:
    return next(row for row in plan["steps"] if row["file"] == file)


def test_plan_shows_the_planners_estimates_of_a_real_database(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """Rows: reltuples of each locked table, read from the target; squawk is clean for HT-036's
    files; every duration is an estimate (nothing ran), marked; the database is unchanged."""
    query(fresh_db, "ANALYZE client_app_overrides; ANALYZE marketplace_modules; ANALYZE clients_enhanced")
    expected = dict(query(fresh_db, """SELECT relname::text, reltuples::bigint FROM pg_class
                                        WHERE relname IN ('client_app_overrides', 'marketplace_modules',
                                                          'clients_enhanced')
                                          AND relnamespace = 'public'::regnamespace"""))
    assert expected["client_app_overrides"] > 100, expected
    before = db_snapshot(fresh_db)
    result, plan = run_plan(fresh_db, tmp_path / "reports", phase="2")
    assert result.returncode == 0, playbook_output(result)
    assert plan["database"]["reachable"] is True, plan["database"]
    columns = step(plan, "phase2/deploy/010_columns.sql")
    assert columns["rows"] == {"client_app_overrides": {"rows": expected["client_app_overrides"], "note": ""}}
    assert columns["rows_total"] == expected["client_app_overrides"]
    indexes = step(plan, "phase2/deploy/030_indexes.sql")
    assert indexes["rows_total"] == expected["client_app_overrides"] + expected["marketplace_modules"]
    # Phase 2's new tables are not there yet: said so, not counted.
    tables = step(plan, "phase2/deploy/020_tables.sql")
    assert tables["rows"]["orchestration_workflows"] == {"rows": None, "note": "not there yet"}
    assert tables["rows"]["clients_enhanced"]["rows"] == expected["clients_enhanced"]
    for row in plan["steps"]:
        assert row["duration"]["source"] == "estimate" and "ESTIMATE" in row["duration"]["note"], row
        assert row["squawk"]["status"] == "clean", row
    out = flat(result.stdout)
    total = expected["client_app_overrides"]
    assert f"rows: ~{total:,} (client_app_overrides ~{total:,})" in out, out
    assert "duration: ~" in out and "(ESTIMATE, size model)" in out and "squawk: clean" in out, out
    assert "Rows: estimates from pg_class.reltuples" in out, out
    assert f"Plan sha256 {plan['plan_checksum']}" in out, out
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [] and not ledger_exists(fresh_db)


def test_without_a_database_the_plan_says_so(tmp_path: Path) -> None:
    result, plan = run_plan(NO_DB, tmp_path / "reports", phase="2")
    assert result.returncode == 0, playbook_output(result)
    assert plan["database"]["reachable"] is False and plan["database"]["note"].startswith("no database")
    assert all(row["rows_total"] is None for row in plan["steps"] if row["locks"]), plan["steps"]
    out = flat(result.stdout)
    assert "rows: no database" in out and "rows unknown (no database)" in out, out


def test_squawk_findings_of_a_step_file_are_in_the_plan(tmp_path: Path) -> None:
    repo = copy_with_squawk_config(tmp_path)
    edited = repo / "migrations/ht036/phase2/deploy/010_columns.sql"
    edited.write_text(edited.read_text() + "\nCREATE INDEX idx_probe ON client_app_overrides (app_name);\n")
    result, plan = run_plan(NO_DB, tmp_path / "reports", repo, phase="2")
    assert result.returncode == 0, playbook_output(result)
    lint = step(plan, "phase2/deploy/010_columns.sql")["squawk"]
    assert lint["status"] == "findings", lint
    assert "require-concurrent-index-creation" in [f["rule"] for f in lint["findings"]], lint
    assert step(plan, "phase2/deploy/020_tables.sql")["squawk"]["status"] == "clean"
    out = flat(result.stdout)
    assert re.search(r"squawk: \d+ findings?: line \d+ require-concurrent-index-creation", out), out


def test_a_missing_squawk_is_said_not_failed(tmp_path: Path) -> None:
    sql = tmp_path / "x.sql"
    sql.write_text("SELECT 1;\n")
    lint = plan_utils.squawk_file(None, "", str(sql), "x.sql")
    assert lint["status"] == "missing" and "squawk not found" in lint["note"]
    assert plan_utils.find_squawk(str(tmp_path / "no-squawk")) is None
    assert plan_utils.squawk_line(lint).startswith("squawk not found: not linted")


def test_the_duration_is_the_ledgers_measurement_once_a_phase_ran(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """After phases 1 and 2 ran on this database, phase 2's plan shows each step's measured seconds
    (the ledger's) and the phase's; a rehearsal report of this host, where there is one, comes
    first."""
    for phase in ("1", "2"):
        migrated = run_playbook("playbooks/migrate.yml", fresh_db,
                                {"phase": phase, "migration_backup_dir": str(tmp_path / "backups"),
                                 "migration_report_dir": str(tmp_path / "run-reports")})
        assert migrated.returncode == 0, playbook_output(migrated)
    measured = dict(query(fresh_db, """SELECT s ->> 'file', (s ->> 'seconds')::float8
                                         FROM migration_ledger.history h, jsonb_array_elements(h.details -> 'steps') s
                                        WHERE h.phase = '2' AND h.status = 'succeeded'"""))
    columns = next(seconds for file, seconds in measured.items() if file.endswith("/phase2/deploy/010_columns.sql"))
    reports = tmp_path / "reports"
    result, plan = run_plan(fresh_db, reports, phase="2")
    assert result.returncode == 0, playbook_output(result)
    row = step(plan, "phase2/deploy/010_columns.sql")
    assert row["duration"]["source"] == "ledger" and row["duration"]["seconds"] == columns, row
    assert plan["phase_durations"]["2"]["source"] == "ledger", plan["phase_durations"]
    assert "(measured in this database" in flat(result.stdout)  # the callback doubles the quote
    # A rehearsal of this host's clone: the evidence the approver asked for, first.
    (reports / "20261201T000000Z-staging-rehearse-rehearsal.json").write_text(json.dumps({
        "kind": "rehearsal", "verdict": "go",
        "context": {"source": TEST_HOST, "started_at": "2026-12-01T00:00:00+00:00"},
        "phases": [{"phase": "2", "status": "succeeded", "duration_s": 42.5,
                    "steps": [{"file": "/elsewhere/migrations/ht036/phase2/deploy/010_columns.sql",
                               "seconds": 12.25}]}]}))
    result, plan = run_plan(fresh_db, reports, phase="2")
    assert result.returncode == 0, playbook_output(result)
    assert step(plan, "phase2/deploy/010_columns.sql")["duration"] == {
        "seconds": 12.25, "source": "rehearsal", "note": "measured in the rehearsal of 2026-12-01T00:00:00+00:00"}
    assert step(plan, "phase2/deploy/020_tables.sql")["duration"]["source"] == "ledger"
    assert plan["phase_durations"]["2"]["seconds"] == 42.5
    out = flat(result.stdout)
    assert "duration: 12.2 s (measured in the rehearsal of 2026-12-01" in out, out
    assert "expected duration: 42.5 s (measured in the rehearsal" in out, out


def test_migrate_check_prints_the_same_plan(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """migrate.yml --check prints the review plan before its dry run: the same checksum and
    steps as plan.yml's, and the database is unchanged."""
    _, shown = run_plan(fresh_db, tmp_path / "plan", phase="all")
    before = db_snapshot(fresh_db)
    reports = tmp_path / "reports"
    result = run_playbook("playbooks/migrate.yml", fresh_db,
                          {"phase": "all", "migration_report_dir": str(reports),
                           "migration_backup_dir": str(tmp_path / "backups")}, check=True)
    assert result.returncode == 0, playbook_output(result)
    [written] = reports.glob("*-plan-*.json")
    plan = json.loads(written.read_text())
    assert plan["plan_checksum"] == shown["plan_checksum"]
    assert [row["file"] for row in plan["steps"]] == [row["file"] for row in shown["steps"]]
    out = flat(result.stdout)
    assert f"Plan sha256 {shown['plan_checksum']}" in out and "squawk: clean" in out, out
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [] and not ledger_exists(fresh_db)


# --- the plan's checksum -------------------------------------------------------------------

def test_the_checksum_is_stable_and_is_the_signed_plans(tmp_path: Path) -> None:
    """Two runs, and two checkouts at different paths, give the same checksum; it is the sha256 of
    the plan approve.yml writes for signing (one home: module_utils/pgmigrate_plan.py)."""
    _, first = run_plan(NO_DB, tmp_path / "a", phase="all")
    _, again = run_plan(NO_DB, tmp_path / "b", phase="all")
    repo = copy_with_squawk_config(tmp_path)
    _, elsewhere = run_plan(NO_DB, tmp_path / "c", repo, phase="all")
    assert re.fullmatch(r"[0-9a-f]{64}", first["plan_checksum"])
    assert first["plan_checksum"] == again["plan_checksum"] == elsewhere["plan_checksum"]
    signed = run_playbook("playbooks/approve.yml", NO_DB, {"approval_action": "plan", "phase": "all",
                                                           "migration_report_dir": str(tmp_path / "d")})
    assert signed.returncode == 0, playbook_output(signed)
    assert (tmp_path / "d" / f"plan-{TEST_HOST}-{first['plan_checksum']}.txt").is_file(), playbook_output(signed)
    # Another phase list is another plan.
    _, phase2 = run_plan(NO_DB, tmp_path / "e", phase="2")
    assert phase2["plan_checksum"] != first["plan_checksum"]


def test_the_checksum_changes_with_a_steps_file_or_its_manifest_entry(tmp_path: Path) -> None:
    repo = copy_with_squawk_config(tmp_path)
    _, before = run_plan(NO_DB, tmp_path / "a", repo, phase="2")
    edited = repo / "migrations/ht036/phase2/deploy/040_comments.sql"
    edited.write_text(edited.read_text() + "\n-- edited after the review\n")
    _, after_file = run_plan(NO_DB, tmp_path / "b", repo, phase="2")
    assert after_file["plan_checksum"] != before["plan_checksum"]
    manifest = repo / "migrations/ht036/manifest.yml"
    data = yaml.safe_load(manifest.read_text())
    data["phases"]["2"]["steps"][1]["locks"] = [{"mode": "SHARE UPDATE EXCLUSIVE", "table": "client_app_overrides"}]
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    _, after_lock = run_plan(NO_DB, tmp_path / "c", repo, phase="2")
    assert after_lock["plan_checksum"] not in (before["plan_checksum"], after_file["plan_checksum"])
    # A comment in the manifest is no change to the plan.
    manifest.write_text("# a comment\n" + manifest.read_text())
    _, commented = run_plan(NO_DB, tmp_path / "d", repo, phase="2")
    assert commented["plan_checksum"] == after_lock["plan_checksum"]


def test_plan_changes_names_what_changed() -> None:
    root = REPO_ROOT / "migrations/ht036"
    manifest = yaml.safe_load((REPO_ROOT / "migrations/ht036/manifest.yml").read_text())
    phase = manifest["phases"]["2"]
    item = {"phase": "2", "requires": phase["requires"], "checksum_params": {}, "title": phase["title"],
            "role": phase["role"], "steps": phase["steps"],
            "files": [str(root / s["file"]) for s in phase["steps"]]}
    params = {"db_host": "db", "db_port": 5432, "db_name": "agency", "sql_root": str(root),
              "sql_label": "migrations/ht036", "manifest": {k: v for k, v in manifest.items() if k != "phases"},
              "phases": [item]}
    text = plan_utils.plan_text(params)
    assert text == plan_utils.plan_text(params)
    assert text.startswith("pgmigrate plan 2\nmigration ht036 manifest=")
    assert "revert-file migrations/ht036/phase2/revert/010_drop_created.sql sha256=" in text
    changed_steps = [dict(s) for s in phase["steps"]]
    changed_steps[1] = {**changed_steps[1], "kind": "no-transaction"}
    other = plan_utils.plan_text({**params, "phases": [{**item, "steps": changed_steps}]})
    assert plan_utils.plan_changes(text, other) == (
        "phase 2's step migrations/ht036/phase2/deploy/010_columns.sql "
        f"(manifest entry {plan_utils.sha256_of(plan_utils.canonical(phase['steps'][1]))[:12]} -> "
        f"{plan_utils.sha256_of(plan_utils.canonical(changed_steps[1]))[:12]})")
    old_format = "pgmigrate plan 1\n" + text.split("\n", 1)[1]
    assert plan_utils.plan_changes(old_format, text).startswith("the plan's format (pgmigrate plan 1 -> ")
