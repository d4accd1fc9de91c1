"""The migration role's monitoring, alert, abort, notification and Prometheus settings are typed
(roles/migration/meta/argument_specs.yml, preflight): a value of the wrong type or outside the
choices is refused by name before anything changes, the ledger included. Untyped, such a value
passed the preflight and phase 1 ran, to fail (or be misread) only where a hook used it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import db_snapshot, ledger_exists, playbook_output, run_playbook, snapshot_diff


@pytest.mark.parametrize(("variable", "value", "needle"), [
    ("migration_notify_smtp_port", "twenty-five", "migration_notify_smtp_port"),
    ("migration_notify_smtp_secure", "sometimes", "always, never, try, starttls"),
    ("migration_alert_stops_run", "perhaps", "migration_alert_stops_run"),
])
def test_a_mistyped_setting_is_refused_before_anything_changes(
        fresh_db: dict[str, Any], tmp_path: Path, variable: str, value: str, needle: str) -> None:
    before = db_snapshot(fresh_db)
    result = run_playbook("playbooks/migrate.yml", fresh_db,
                          {"phase": "1", variable: value, "migration_backup_dir": str(tmp_path / "backups"),
                           "migration_report_dir": str(tmp_path / "reports")})
    assert result.returncode != 0, playbook_output(result)
    assert needle in result.stdout + result.stderr, playbook_output(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    assert not ledger_exists(fresh_db)
