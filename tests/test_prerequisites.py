"""The preflight requires only what the strategy names: module_installations.status is ours
(the event payload, the handover packages, module_integration_view), and a database without
it migrates through phase 6, the validator passing, with null where that status would be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import playbook_output, query, run_playbook
from rollback_helpers import MIGRATE, out_dirs_in


def test_without_installation_status(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    query(fresh_db, "ALTER TABLE module_installations DROP COLUMN status")
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    assert query(fresh_db, "SELECT status, details->>'passed' FROM migration_ledger.history "
                           "WHERE phase = '6'") == [("succeeded", "true")]
    events = query(fresh_db, """SELECT count(*), count(*) FILTER (WHERE event_payload ? 'status'
                                                                AND event_payload->'status' = 'null')
                                  FROM integration_events WHERE event_type = 'module_installed'""")[0]
    assert events[0] > 0 and events[0] == events[1], events
    packages = query(fresh_db, """SELECT count(*), count(*) FILTER (WHERE e->'status' = 'null')
                                    FROM handover_packages, jsonb_array_elements(installed_modules) e""")[0]
    assert packages[0] > 0 and packages[0] == packages[1], packages
    view = query(fresh_db, """SELECT count(*), count(installation_id), count(installation_status)
                                FROM module_integration_view""")[0]
    assert view[1] > 0 and view[2] == 0, view


def test_installation_status_where_present(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """With the column, the three show the installation's own status."""
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs_in(tmp_path)})
    assert result.returncode == 0, playbook_output(result)
    assert query(fresh_db, """SELECT count(*) FROM integration_events e JOIN module_installations mi
                                ON mi.id = e.correlation_id
                               WHERE e.event_type = 'module_installed'
                                 AND e.event_payload->>'status' IS DISTINCT FROM mi.status""") == [(0,)]
    rows = query(fresh_db, """SELECT count(*), count(*) FILTER (WHERE v.installation_status = mi.status)
                                FROM module_integration_view v JOIN module_installations mi
                                  ON mi.id = v.installation_id""")[0]
    assert rows[0] > 0 and rows[0] == rows[1], rows
