"""After the cutover (docs/operations.md#after-the-cutover): a full rollback counts what the new
application wrote since complete.yml and refuses unless told to discard it; cleanup.yml's finalize
drops what only a precise rollback needs, says first what that forfeits, and a later rollback of
phase 3 refuses. Each refusal leaves the database as it was (a fingerprint before and after)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import db_snapshot, playbook_output, query, run_playbook, snapshot_diff
from rollback_helpers import applied, out_dirs_in

COMPLETE = "playbooks/complete.yml"
ROLLBACK = "playbooks/rollback.yml"
CLEANUP = "playbooks/cleanup.yml"
FINALIZED = ("phase3_override_plan", "phase3_override_sync", "phase3_inserted")


def ledger_tables(db: dict[str, Any]) -> set[str]:
    rows = query(db, "SELECT relname FROM pg_class WHERE relnamespace = 'migration_ledger'::regnamespace "
                     "AND relkind = 'r'")
    return {r[0] for r in rows}


def complete(db: dict[str, Any], tmp_path: Path) -> None:
    done = run_playbook(COMPLETE, db, out_dirs_in(tmp_path))
    assert done.returncode == 0, playbook_output(done)


def the_new_application_writes(db: dict[str, Any]) -> None:
    """What the next version does after the cutover: a workflow of its own, an event processed, an
    override relinked to another module of the client's, one it inserts already linked, metadata."""
    query(db, """INSERT INTO orchestration_workflows (workflow_name, workflow_type, client_id)
                 SELECT 'renewal', 'renewal', id FROM clients_enhanced ORDER BY id LIMIT 1""")
    query(db, """UPDATE integration_events SET status = 'processed', processed_at = clock_timestamp()
                  WHERE id = (SELECT id FROM integration_events ORDER BY id LIMIT 1)""")
    query(db, """UPDATE client_app_overrides AS cao
                    SET marketplace_module_id = (SELECT m.id FROM marketplace_modules m
                                                  WHERE m.id <> cao.marketplace_module_id ORDER BY m.id LIMIT 1)
                  WHERE id = (SELECT id FROM client_app_overrides WHERE marketplace_module_id IS NOT NULL
                              ORDER BY id LIMIT 1)""")
    query(db, """UPDATE client_app_overrides SET activation_metadata = '{"by": "v2"}'
                  WHERE id = (SELECT id FROM client_app_overrides ORDER BY id DESC LIMIT 1)""")


def test_rollback_after_the_cutover_counts_what_the_new_application_wrote(
        migrated_db: dict[str, Any], tmp_path: Path) -> None:
    out = out_dirs_in(tmp_path)
    complete(migrated_db, tmp_path)
    # Nothing written since: the plan counts nothing (check mode plans for real, changes nothing).
    quiet = run_playbook(ROLLBACK, migrated_db, {**out, "phase": "all"}, check=True)
    assert quiet.returncode == 0, playbook_output(quiet)
    assert "Discarding" not in quiet.stdout

    the_new_application_writes(migrated_db)
    before = db_snapshot(migrated_db)
    refused = run_playbook(ROLLBACK, migrated_db, {**out, "phase": "all"})
    assert refused.returncode != 0, playbook_output(refused)
    out_text = refused.stdout
    assert "since the cutover at" in out_text, playbook_output(refused)
    for named in ("1 orchestration_workflows rows created or changed", "1 integration_events rows created or changed",
                  "1 overrides relinked", "1 overrides with activation_metadata",
                  "-e rollback_discard_new_data=true", "Nothing was changed."):
        assert named in out_text, (named, playbook_output(refused))
    assert snapshot_diff(before, db_snapshot(migrated_db)) == []

    # Told to discard it: rolled back, what was discarded said and recorded.
    done = run_playbook(ROLLBACK, migrated_db, {**out, "phase": "all", "rollback_discard_new_data": True})
    assert done.returncode == 0, playbook_output(done)
    assert "Discarding (rollback_discard_new_data)" in done.stdout
    assert applied(migrated_db) == []
    recorded = query(migrated_db, """SELECT details->'discarded_new_data'->'total' FROM migration_ledger.history
                                      WHERE direction = 'rollback' AND phase = '2'""")
    assert recorded == [(4,)]


def test_finalize_drops_what_only_a_precise_rollback_needs(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    out = out_dirs_in(tmp_path)
    # Before the cutover: refused, nothing changed.
    before = db_snapshot(migrated_db)
    early = run_playbook(CLEANUP, migrated_db, {**out, "cleanup_finalize": True})
    assert early.returncode != 0, playbook_output(early)
    assert "after the cutover (playbooks/complete.yml)" in early.stdout and "Nothing was changed." in early.stdout
    assert snapshot_diff(before, db_snapshot(migrated_db)) == []

    complete(migrated_db, tmp_path)
    # Check mode says what it would drop and what that forfeits, and drops nothing.
    before = db_snapshot(migrated_db)
    checked = run_playbook(CLEANUP, migrated_db, {**out, "cleanup_finalize": True}, check=True)
    assert checked.returncode == 0, playbook_output(checked)
    assert "Check mode: would finalize" in checked.stdout and "forfeits" in checked.stdout
    assert snapshot_diff(before, db_snapshot(migrated_db)) == []

    done = run_playbook(CLEANUP, migrated_db, {**out, "cleanup_finalize": True})
    assert done.returncode == 0, playbook_output(done)
    assert "Finalizing: dropping migration_ledger.phase3_override_plan" in done.stdout
    assert not ledger_tables(migrated_db) & set(FINALIZED)
    [(status, dropped)] = query(migrated_db, """SELECT status, details->'dropped' FROM migration_ledger.history
                                               WHERE phase = 'finalize'""")
    assert status == "succeeded" and len(dropped) == 3

    # A rollback of phase 3 cannot be precise any more: refused, saying why and what to do instead.
    before = db_snapshot(migrated_db)
    for phase in ("all", "data"):
        refused = run_playbook(ROLLBACK, migrated_db, {**out, "phase": phase})
        assert refused.returncode != 0, playbook_output(refused)
        assert "the migration was finalized at" in refused.stdout and "restore.yml" in refused.stdout
    assert snapshot_diff(before, db_snapshot(migrated_db)) == []

    # Finalized already: a second run has nothing to drop.
    again = run_playbook(CLEANUP, migrated_db, {**out, "cleanup_finalize": True})
    assert again.returncode == 0 and "Nothing to finalize" in again.stdout, playbook_output(again)
