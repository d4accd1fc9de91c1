"""playbooks/watch.yml (strategy 4.2): the 48-hour watch on a database migrated like `make demo`,
against the real test cluster, with loopback webhook receivers for the usual and the escalation
channels (tools/webhook_receiver.py). Three runs: healthy; an event left unprocessed for ten
minutes (the alert); the same again (repeated: escalated). Then the end of the watch and cron."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from after_helpers import next_version_processes_events
from helpers import REPO_ROOT, db_snapshot, ledger_exists, query, run_playbook, snapshot_diff
from rehearsal_helpers import out_of

WATCH = "playbooks/watch.yml"
sys.path.insert(0, str(REPO_ROOT / "tools"))
webhook_receiver = importlib.import_module("webhook_receiver")
PNG = b"\x89PNG\r\n\x1a\n"


def test_watch_refuses_before_phase_6(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    before = db_snapshot(fresh_db)
    result = run_playbook(WATCH, fresh_db, {"migration_report_dir": str(tmp_path)})
    assert result.returncode != 0
    assert "the watch starts once phase 6 is applied" in out_of(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [] and not ledger_exists(fresh_db)


def test_three_runs_trend_report_alert_and_escalation(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    next_version_processes_events(migrated_db)
    # The next version runs workflows: three steps succeed, one fails (75% success).
    query(migrated_db, """
        INSERT INTO workflow_executions (workflow_id, step_key, status, started_at, finished_at, error_message)
        SELECT w.id, s.k, s.st, clock_timestamp(), clock_timestamp(), CASE WHEN s.st = 'failed' THEN 'timeout' END
          FROM (SELECT id FROM orchestration_workflows ORDER BY id LIMIT 1) w,
               (VALUES ('a', 'succeeded'), ('b', 'succeeded'), ('c', 'succeeded'), ('d', 'failed')) s(k, st)""")
    with webhook_receiver.WebhookReceiver(tmp_path / "hook") as hook, \
            webhook_receiver.WebhookReceiver(tmp_path / "escalation") as esc:
        extra = {"migration_report_dir": str(reports), "migration_notify_webhook_url": hook.url,
                 "migration_notify_escalation_webhook_url": esc.url}
        first = run_playbook(WATCH, migrated_db, extra)
        assert first.returncode == 0, out_of(first)
        assert [m["event"] for m in hook.messages()] == [] and esc.messages() == []
        # Induced: an event left unprocessed for ten minutes (over the 300 s threshold).
        query(migrated_db, """INSERT INTO integration_events (event_type, event_source, created_at)
                              VALUES ('module_installed', 'modules', clock_timestamp() - interval '10 minutes')""")
        second = run_playbook(WATCH, migrated_db, extra)
        assert second.returncode == 0, out_of(second)
        alerts = [m for m in hook.messages() if m["event"] == "alert"]
        assert len(alerts) == 1 and "event processing lag" in alerts[0]["text"], hook.messages()
        assert esc.messages() == []
        third = run_playbook(WATCH, migrated_db, extra)
        assert third.returncode == 0, out_of(third)
        escalated = esc.messages()
        assert [m["event"] for m in escalated] == ["escalation"], escalated
        assert "ESCALATION" in escalated[0]["text"] and "2 sample(s) in a row" in escalated[0]["text"]
        assert len([m for m in hook.messages() if m["event"] == "alert"]) == 2
    rows = query(migrated_db, "SELECT kind, metrics, alerts, escalations FROM migration_ledger.watch_samples "
                              "ORDER BY id")
    assert [r[0] for r in rows] == ["sample"] * 3
    assert rows[0][1]["workflow_success_pct"] == 75.0 and rows[0][2] == []
    assert [a["metric"] for a in rows[1][2]] == ["event_lag_s"] and rows[1][3] == []
    assert rows[2][2][0]["repeat"] == 2 and rows[2][3][0]["metric"] == "event_lag_s"
    md = (reports / "watch-testdb.md").read_text()
    assert "3 sample(s) so far" in md and "Alerts raised: 2; escalated: 1" in md
    for metric in ("probe_p95_ms", "event_lag_s", "workflow_success_pct", "database_size_mib"):
        png = reports / "watch-testdb" / f"{metric}.png"
        assert png.read_bytes().startswith(PNG), png
        assert f"](watch-testdb/{metric}.png)" in md
    data = json.loads((reports / "watch-testdb.json").read_text())
    assert len(data["samples"]) == 3 and data["over"] is False


def test_watch_over_stops_sampling_and_says_so_once(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    with webhook_receiver.WebhookReceiver(tmp_path / "hook") as hook:
        extra = {"migration_report_dir": str(tmp_path), "watch_hours": 0.0001,
                 "migration_notify_webhook_url": hook.url}
        for _ in range(2):
            result = run_playbook(WATCH, migrated_db, extra)
            assert result.returncode == 0, out_of(result)
            assert "the watch is over" in out_of(result)
        assert [m["event"] for m in hook.messages()] == ["watch_over"]
    assert [r[0] for r in query(migrated_db, "SELECT kind FROM migration_ledger.watch_samples")] == ["over"]
    assert "**The watch is over**" in (tmp_path / "watch-testdb.md").read_text()


def test_watch_cron_entry(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    cron_file = tmp_path / "pgmigrate-watch"
    extra = {"migration_report_dir": str(tmp_path), "watch_cron_file": str(cron_file), "watch_cron_user": "root"}
    result = run_playbook(WATCH, fresh_db, {**extra, "watch_cron_state": "present"})
    assert result.returncode == 0, out_of(result)
    text = cron_file.read_text()
    assert "#Ansible: pgmigrate 48-hour watch testdb" in text
    assert "*/15 * * * * root cd " in text and "playbooks/watch.yml --limit testdb" in text
    assert not ledger_exists(fresh_db)
    result = run_playbook(WATCH, fresh_db, {**extra, "watch_cron_state": "absent"})
    assert result.returncode == 0, out_of(result)
    assert "pgmigrate 48-hour watch" not in (cron_file.read_text() if cron_file.exists() else "")
