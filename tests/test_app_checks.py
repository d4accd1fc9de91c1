"""migration_app_checks (strategy 3.6, "Validate API endpoints"): HTTP checks through
ansible.builtin.uri against an application the test starts (tools/app_server.py) that answers
from the migrated database, a tenant's dashboard included (its JWT's claims in
request.jwt.claims, as `authenticated`). Healthy, then broken: phase 6 fails, the checkpoint
stops the run, the watch alerts and escalates."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from helpers import REPO_ROOT, query, run_playbook
from rehearsal_helpers import out_of

sys.path.insert(0, str(REPO_ROOT / "tools"))
app_server = importlib.import_module("app_server")
webhook_receiver = importlib.import_module("webhook_receiver")
SECRET = "test-jwt-secret"


def dsn(db: dict[str, Any]) -> str:
    return f"host={db['host']} port={db['port']} dbname={db['dbname']} user={db['user']} password={db['password']}"


# A check's latency is measured on the controller around the uri task, Ansible's module start
# included: on the suite's loaded two CPUs that alone can take seconds, so the healthy checks get a
# wide bound; the slow one (test_a_failing_check_stops...) is judged against a tight one.
WIDE_MS = 30000


def checks(app: Any, client_id: str) -> list[dict[str, Any]]:
    token = app_server.make_jwt({"sub": "u1", "role": "authenticated", "app_metadata": {"client_id": client_id}},
                                SECRET)
    return [
        {"name": "health", "url": f"{app.url}/health", "json_field": "status", "json_value": "ok"},
        {"name": "overrides", "url": f"{app.url}/api/clients/{client_id}/overrides", "json_field": "overrides"},
        # The tenant's view: exactly its own client, through its token's claims.
        {"name": "tenant dashboard", "url": f"{app.url}/api/dashboard", "from_phase": "5",
         "headers": {"Authorization": f"Bearer {token}"}, "json_field": "clients_seen", "json_value": 1},
        {"name": "no token", "url": f"{app.url}/api/dashboard", "status": 401, "from_phase": "5"},
    ]


def wide(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"max_latency_ms": WIDE_MS, **item} for item in items]


def a_client(db: dict[str, Any]) -> str:
    return str(query(db, "SELECT id FROM clients_enhanced ORDER BY id LIMIT 1")[0][0])


def test_phase6_passes_then_the_watch_escalates_a_broken_tenant_view(migrated_db: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    out = {"migration_report_dir": str(tmp_path / "reports"), "migration_backup_dir": str(tmp_path / "backups")}
    with app_server.AppServer(dsn(migrated_db), SECRET) as app, \
            webhook_receiver.WebhookReceiver(tmp_path / "escalation") as esc:
        extra = {**out, "migration_app_checks": wide(checks(app, a_client(migrated_db))),
                 "migration_notify_escalation_webhook_url": esc.url}
        rolled = run_playbook("playbooks/rollback.yml", migrated_db, {**out, "phase": "6"})
        assert rolled.returncode == 0, out_of(rolled)
        healthy = run_playbook("playbooks/migrate.yml", migrated_db, {**extra, "phase": "6"})
        assert healthy.returncode == 0, out_of(healthy)
        details = query(migrated_db, """SELECT details->'app_checks' FROM migration_ledger.history
                                         WHERE phase = '6' AND direction = 'apply' ORDER BY id DESC LIMIT 1""")[0][0]
        assert [(c["name"], c["ok"], c["status"]) for c in details] == [
            ("health", True, 200), ("overrides", True, 200), ("tenant dashboard", True, 200), ("no token", True, 401)]
        assert details[2]["json_value"] == 1
        # Broken: the tenant role lost its grant on the dashboard; the application answers 503.
        query(migrated_db, "REVOKE SELECT ON unified_client_dashboard FROM authenticated")
        watched = run_playbook("playbooks/watch.yml", migrated_db, extra)
        assert watched.returncode == 0, out_of(watched)
        escalated = esc.messages()
    assert [m["event"] for m in escalated] == ["escalation"]
    assert "application check tenant dashboard failed: status 503, expected 200" in escalated[0]["text"]
    # The bearer token never reaches the ledger or the output.
    token_part = checks(app, a_client(migrated_db))[2]["headers"]["Authorization"].split(".")[-1]
    assert token_part not in out_of(watched) + out_of(healthy)
    assert not query(migrated_db, "SELECT 1 FROM migration_ledger.history WHERE details::text LIKE %s",
                     (f"%{token_part}%",))


def test_phase6_fails_on_a_broken_application(migrated_db: dict[str, Any], tmp_path: Path) -> None:
    out = {"migration_report_dir": str(tmp_path / "reports"), "migration_backup_dir": str(tmp_path / "backups")}
    with app_server.AppServer(dsn(migrated_db), SECRET) as app:
        app.broken = True
        rolled = run_playbook("playbooks/rollback.yml", migrated_db, {**out, "phase": "6"})
        assert rolled.returncode == 0, out_of(rolled)
        result = run_playbook("playbooks/migrate.yml", migrated_db, {
            **out, "phase": "6", "migration_app_checks": wide(checks(app, a_client(migrated_db))[:1])})
    assert result.returncode != 0
    assert "Application checks failed: application check health failed: status 503" in out_of(result)
    assert query(migrated_db, """SELECT status FROM migration_ledger.history WHERE phase = '6'
                                  ORDER BY id DESC LIMIT 1""")[0][0] == "failed"


def test_a_failing_check_stops_the_run_at_the_next_checkpoint(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    out = {"migration_report_dir": str(tmp_path / "reports"), "migration_backup_dir": str(tmp_path / "backups")}
    with app_server.AppServer(dsn(fresh_db), SECRET) as app:
        app.delay_s = 3.0  # slow: over the check's bound whatever Ansible's own overhead
        result = run_playbook("playbooks/migrate.yml", fresh_db, {
            **out, "phase": "all", "migration_app_checks": [
                {"name": "health", "url": f"{app.url}/health", "max_latency_ms": 2500}]})
    assert result.returncode != 0
    text = out_of(result)
    assert "stopped after phase 1, before the next phase: application check health failed: latency" in text
    assert [r[0] for r in query(fresh_db, "SELECT phase FROM migration_ledger.history ORDER BY id")] == ["1"]
