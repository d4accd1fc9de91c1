"""A phase whose manifest names no role runs its steps by kind (roles/migration/tasks/run_steps.yml,
docs/writing-a-migration.md): HT-036's phases 2 and 4 with the `role` taken out of a copy of the
manifest apply as they do with their roles, and the ledger records each step and what the
checks read (phase 4's violations, run before its steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import copy_repository, playbook_output, query, run_playbook_at

MIGRATE = "playbooks/migrate.yml"


def test_a_phase_without_a_role_runs_its_steps_by_kind(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    manifest = repo / "migrations" / "ht036" / "manifest.yml"
    text = manifest.read_text()
    for role in ("phase2_schema", "phase4_constraints"):
        assert f"    role: {role}\n" in text
        text = text.replace(f"    role: {role}\n", "")
    manifest.write_text(text)
    out = {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}
    for phase in ("1", "2", "3", "4"):
        result = run_playbook_at(repo, MIGRATE, fresh_db, {"phase": phase, **out})
        assert result.returncode == 0, playbook_output(result)
        if phase in ("2", "4"):
            assert f"Run step by step: phase {phase}: " in result.stdout, playbook_output(result)
    rows = dict(query(fresh_db, """SELECT phase, details FROM migration_ledger.history
                                    WHERE phase IN ('2', '4') AND status = 'succeeded'"""))
    # Phase 2: every step file, in the manifest's order, each run as its header says.
    assert [Path(s["file"]).name for s in rows["2"]["steps"]] == [
        "005_record_created.sql", "010_columns.sql", "020_tables.sql", "025_event_failures.sql",
        "027_private.sql", "030_indexes.sql", "040_comments.sql"], rows["2"]
    assert rows["2"]["checks"] == {"before": [], "after": []}
    # Phase 4: the violations counted before the steps (none), then the three steps.
    assert rows["4"]["checks"]["before"] == [[{"marketplace_module_violations": 0, "installation_violations": 0}]]
    assert [Path(s["file"]).name for s in rows["4"]["steps"]] == [
        "010_fk_marketplace_module.sql", "020_fk_installation.sql", "030_validate.sql"], rows["4"]
    valid = query(fresh_db, """SELECT conname, convalidated FROM pg_constraint
                                WHERE conrelid = 'client_app_overrides'::regclass AND contype = 'f'
                                  AND conname IN ('fk_cao_marketplace_module', 'fk_cao_installation')""")
    assert len(valid) == 2 and all(v for _, v in valid), valid
