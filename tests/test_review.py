"""playbooks/review.yml (strategy 7.1) and the schema documentation (4.1), on a database migrated
like `make demo`, against the real test cluster: the timeline holds every run, the rollback and
the rerun; the challenges name them and the watch's alert; the schema documentation comes from
phase 2's COMMENT ON and the catalog, and docs/schema.md is what it generates. Read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import REPO_ROOT, db_snapshot, ledger_exists, query, run_playbook, snapshot_diff
from rehearsal_helpers import out_of

REVIEW = "playbooks/review.yml"


def test_review_refuses_a_database_without_ledger(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    result = run_playbook(REVIEW, fresh_db, {"migration_report_dir": str(tmp_path)})
    assert result.returncode != 0 and "has no migration ledger: nothing to review" in out_of(result)
    assert not ledger_exists(fresh_db)


def test_phase2_comments_are_in_the_catalog(migrated_db: dict[str, Any]) -> None:
    rows = dict(query(migrated_db, """
        SELECT c.relname || coalesce('.' || a.attname, ''), d.description
          FROM pg_description d JOIN pg_class c ON c.oid = d.objoid
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
         WHERE d.classoid = 'pg_class'::regclass AND c.relnamespace = 'public'::regnamespace"""))
    for table in ("orchestration_workflows", "workflow_executions", "handover_packages", "integration_events"):
        assert table in rows
        columns = [r[0] for r in query(migrated_db, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                                    "AND attnum > 0 AND NOT attisdropped", (table,))]
        assert all(f"{table}.{c}" in rows for c in columns), (table, columns)
    for column in ("marketplace_module_id", "installation_id", "activation_status", "activation_metadata"):
        assert f"client_app_overrides.{column}" in rows
    assert "DELETES THIS OVERRIDE" in rows["client_app_overrides.installation_id"]
    assert "client_app_overrides" not in rows  # the application's own table keeps its own (no) comment


def test_review_timeline_challenges_and_schema(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    out = {"migration_report_dir": str(reports), "migration_backup_dir": str(tmp_path / "backups")}
    # History worth reviewing: phase 6 rolled back and applied again, a watch sample with an alert.
    for playbook, phase in (("playbooks/rollback.yml", "6"), ("playbooks/migrate.yml", "6")):
        result = run_playbook(playbook, migrated_db, {**out, "phase": phase})
        assert result.returncode == 0, out_of(result)
    result = run_playbook("playbooks/watch.yml", migrated_db, {**out, "migration_alert_event_lag_s": 0.001})
    assert result.returncode == 0, out_of(result)
    before = db_snapshot(migrated_db)
    schema_doc = tmp_path / "schema.md"
    result = run_playbook(REVIEW, migrated_db, {**out, "review_schema_doc": str(schema_doc)})
    assert result.returncode == 0, out_of(result)
    assert snapshot_diff(before, db_snapshot(migrated_db)) == []
    md = next(reports.glob("*-review-testdb-review.md")).read_text()
    history = query(migrated_db, "SELECT phase, direction FROM migration_ledger.history ORDER BY id")
    assert len(history) == 8 and history[-2:] == [("6", "rollback"), ("6", "apply")]
    assert "8 ledger record(s) in 3 run(s)" in md
    assert "| 6 VALIDATION: integrity, isolation, p95 (attempt 2) | apply | succeeded" in md
    assert "phase 6 rolled back at" in md and "phase 6 was run again (attempt 2" in md
    assert "48-hour watch alert at" in md and "event processing lag" in md
    assert "## 4. Team feedback" in md and "_To complete by the team._" in md
    assert "| Migration successful | missing |" in md
    assert "| probe query p95 (ms) |" in md
    schema = schema_doc.read_text()
    assert schema in md.replace("## Schema documentation", "# Schema documentation").replace("\n### ", "\n## ")
    assert "fk_cao_installation" in schema and "(on delete: CASCADE)" in schema
    assert "DELETES THIS OVERRIDE" in schema and "Row-level security is enabled." in schema
    # docs/schema.md is this generated file (regenerate: review.yml -e review_schema_doc=$PWD/docs/schema.md).
    assert (REPO_ROOT / "docs" / "schema.md").read_text() == schema
