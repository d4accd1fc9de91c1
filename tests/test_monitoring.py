"""Monitoring, alerts, notifications and reports (issue 6), against the real test cluster.

The thresholds and abort criteria are checked as functions on real samples; the playbook tests
run migrate.yml with a throwaway webhook receiver and SMTP sink on loopback
(tools/webhook_receiver.py) and read what arrived, the reports and the ledger.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
import yaml
from helpers import REPO_ROOT, connect, pgcluster, playbook_output, plugin, query, run_playbook

MIGRATE = "playbooks/migrate.yml"
sys.path.insert(0, str(REPO_ROOT / "tools"))
webhook_receiver = importlib.import_module("webhook_receiver")


monitor = plugin("module_utils", "pgmigrate_monitor")
# HT-036's probe and checks, as the monitoring role passes them (its manifest's monitor section).
HT036 = REPO_ROOT / "migrations" / "ht036"
HT036_CHECKS = monitor.monitor_checks(str(HT036), yaml.safe_load((HT036 / "manifest.yml").read_text())["monitor"])


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Any]:
    with webhook_receiver.WebhookReceiver(tmp_path / "hook", smtp=True) as hook:
        yield hook


@pytest.fixture
def out_dirs(tmp_path: Path) -> dict[str, str]:
    return {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}


def the_report(out_dirs: dict[str, str]) -> tuple[dict[str, Any], str, Path]:
    reports = sorted(Path(out_dirs["migration_report_dir"]).glob("*-migrate-testdb.json"))
    assert len(reports) == 1, reports
    return json.loads(reports[0].read_text()), reports[0].with_suffix(".md").read_text(), reports[0]


def sample_of(db: dict[str, Any]) -> dict[str, Any]:
    conn = connect(db)
    conn.autocommit = True
    try:
        return monitor.take_sample(conn, HT036_CHECKS["probe_sql"], 5, 5000, checks=HT036_CHECKS)
    finally:
        conn.close()


# --- samples and thresholds on a real database -------------------------------------------------


def test_sample_measures_what_the_strategy_names(fresh_db: dict[str, Any]) -> None:
    """Connections against max_connections, lock waits, longest query, xacts, probe, size,
    replication and a clear note where pg_stat_statements is missing."""
    s = sample_of(fresh_db)
    assert s["connections"]["max"] == int(query(fresh_db, "SHOW max_connections")[0][0])
    assert 1 <= s["connections"]["used"] < s["connections"]["max"]
    assert s["locks"] == {"waiting": 0, "longest_wait_s": 0.0}
    assert s["xacts"]["commit"] > 0
    assert s["probe"]["runs"] == 5 and s["probe"]["p95_ms"] > 0
    assert s["database_size_bytes"] > 1_000_000
    assert s["replication"]["replicas"] == 0 and "no replicas" in s["replication"]["note"]
    assert s["pg_stat_statements"]["installed"] is False
    assert "pg_stat_statements is not installed" in s["pg_stat_statements"]["note"]
    assert s["event_lag_s"] is None  # integration_events does not exist before phase 2
    assert s["integrity"] == {} and s["integrity_by_constraint"] == []


OVERRIDE_CHECKS = ["overrides linked to a marketplace module that does not exist",
                   "overrides linked to an installation that does not exist"]
KEYED_CHECKS = ["workflows whose client does not exist", "handover packages whose client does not exist"]


def test_integrity_counts_what_no_foreign_key_guarantees(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """The integrity counts scan tables: a check a validated foreign key guarantees is not run
    (the workflows' and packages' keys from phase 2, the overrides' from phase 4), and the
    background sampler leaves them to the samples before and after each phase."""
    for phase in (1, 2, 3):
        result = run_playbook(MIGRATE, fresh_db, {"phase": phase, **out_dirs})
        assert result.returncode == 0, playbook_output(result)
    s = sample_of(fresh_db)
    assert s["integrity"] == dict.fromkeys(OVERRIDE_CHECKS, 0) and s["integrity_by_constraint"] == KEYED_CHECKS
    query(fresh_db, """UPDATE client_app_overrides SET marketplace_module_id = gen_random_uuid()
                        WHERE id = (SELECT id FROM client_app_overrides ORDER BY id LIMIT 1)""")
    assert sample_of(fresh_db)["integrity"][OVERRIDE_CHECKS[0]] == 1  # no key yet: counted
    query(fresh_db, """UPDATE client_app_overrides AS o SET marketplace_module_id = p.module_id
                         FROM migration_ledger.phase3_override_plan AS p
                        WHERE p.override_id = o.id
                          AND o.id = (SELECT id FROM client_app_overrides ORDER BY id LIMIT 1)""")
    result = run_playbook(MIGRATE, fresh_db, {"phase": 4, **out_dirs})
    assert result.returncode == 0, playbook_output(result)
    s = sample_of(fresh_db)
    assert s["integrity"] == {} and s["integrity_by_constraint"] == OVERRIDE_CHECKS + KEYED_CHECKS
    # A key added NOT VALID guarantees nothing about the rows already there: counted again.
    query(fresh_db, "ALTER TABLE client_app_overrides DROP CONSTRAINT fk_cao_installation")
    query(fresh_db, """ALTER TABLE client_app_overrides ADD CONSTRAINT fk_cao_installation
                       FOREIGN KEY (installation_id) REFERENCES module_installations (id) NOT VALID""")
    assert sample_of(fresh_db)["integrity"] == {OVERRIDE_CHECKS[1]: 0}
    # The background sampler's samples (samples.jsonl, kind "sample" during a long phase) carry none.
    background = [json.loads(line) for f in Path(out_dirs["migration_report_dir"]).rglob("samples.jsonl")
                  for line in f.read_text().splitlines()]
    kinds = {(r["kind"], "integrity" in r) for r in background if "error" not in r}
    assert ("sample", False) in kinds and ("after", True) in kinds and ("sample", True) not in kinds, kinds


def test_lock_wait_and_longest_query_are_seen(fresh_db: dict[str, Any]) -> None:
    """A session waiting on a lock shows as a lock wait and as the longest running query."""
    holder = connect(fresh_db)
    waiter = psycopg2.connect(**{k: fresh_db[k] for k in ("host", "port", "user", "password", "dbname")},
                              async_=True)
    try:
        psycopg2.extras.wait_select(waiter)
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE client_deployments IN ACCESS EXCLUSIVE MODE")
        waiting = waiter.cursor()  # kept: psycopg2 forgets a query whose async cursor is gone
        waiting.execute("SET statement_timeout = '10s'; SELECT count(*) FROM client_deployments")
        time.sleep(1.0)
        s = sample_of(fresh_db)
        assert s["locks"]["waiting"] >= 1
        assert s["locks"]["longest_wait_s"] >= 0.5
        assert s["longest_query"]["seconds"] >= 0.5
        assert s["longest_query"]["waiting_on"] == "Lock"
        assert "query" not in s["longest_query"]  # never the text: it may carry secrets
    finally:
        holder.rollback()
        holder.close()
        psycopg2.extras.wait_select(waiter)
        waiter.close()


def test_thresholds_are_the_strategys() -> None:
    assert monitor.DEFAULT_THRESHOLDS["p95_ms"] == 2000
    assert monitor.DEFAULT_THRESHOLDS["error_rate_pct"] == 1
    assert monitor.DEFAULT_THRESHOLDS["event_lag_s"] == 300
    assert monitor.DEFAULT_THRESHOLDS["pool_utilisation_pct"] == 85
    assert monitor.DEFAULT_ABORT["degradation_pct"] == 50


def _sample(pool: float = 10.0, probe: float = 5.0, lag: float | None = None,
            integrity: dict[str, int] | None = None) -> dict[str, Any]:
    return {"at": "t", "connections": {"used": int(pool), "max": 100, "utilisation_pct": pool},
            "probe": {"p95_ms": probe}, "event_lag_s": lag, "integrity": integrity or {},
            "locks": {"waiting": 0, "longest_wait_s": 0}, "xacts": {"commit": 0, "rollback": 0}}


def test_each_threshold_raises_its_alert() -> None:
    metrics = {"p95_ms": 2500.0, "error_rate_pct": 2.0, "error_rate_xacts": 5000, "error_rate_judged": True}
    alerts = monitor.evaluate(_sample(pool=90, lag=400), metrics, {}, None, {}, "3")
    assert {a["metric"] for a in alerts} == {"pool_utilisation_pct", "p95_ms", "error_rate_pct", "event_lag_s"}
    assert all(not a["abort"] and a["phase"] == "3" for a in alerts)
    quiet = monitor.evaluate(_sample(pool=85, lag=300), {"p95_ms": 2000.0, "error_rate_pct": 1.0,
                                                         "error_rate_judged": True}, {}, None, {})
    assert quiet == []  # "over" the threshold, not at it


def test_error_rate_needs_enough_transactions() -> None:
    """A handful of transactions says nothing about an error rate: shown, never alerted on."""
    before = {"xacts": {"commit": 100, "rollback": 0}}
    after = {"xacts": {"commit": 150, "rollback": 10}}
    metrics = monitor.derive(after, before, 1000)
    assert metrics["error_rate_pct"] == pytest.approx(16.667, abs=0.01)
    assert metrics["error_rate_judged"] is False
    assert monitor.evaluate(_sample(), metrics, {}, None, {}) == []


def test_degradation_over_half_against_the_baseline_aborts() -> None:
    baseline = _sample(probe=40.0)
    slow = monitor.evaluate(_sample(probe=70.0), {}, {}, baseline, {})
    assert [a["metric"] for a in slow] == ["degradation_pct"]
    assert slow[0]["abort"] and slow[0]["value"] == 75.0
    assert "degraded by 75%" in slow[0]["message"]
    assert monitor.evaluate(_sample(probe=59.0), {}, {}, baseline, {}) == []
    # Sub-millisecond noise is not a degradation: the difference must exceed min_delta_ms.
    assert monitor.evaluate(_sample(probe=0.9), {}, {}, _sample(probe=0.3), {}) == []


def test_integrity_violation_aborts() -> None:
    alerts = monitor.evaluate(_sample(integrity={"orphans": 2, "fine": 0}), {}, {}, None, {})
    assert len(alerts) == 1 and alerts[0]["abort"] and "integrity violation: 2 orphans" in alerts[0]["message"]


def test_statements_p95_is_calls_weighted_over_the_interval() -> None:
    before = {"a": [100, 100.0], "b": [10, 1000.0]}
    after = {"a": [1100, 1100.0], "b": [60, 6000.0], "c": [5, 50000.0]}
    # Interval: a 1000 calls at 1 ms, b 50 calls at 100 ms, c 5 calls at 10 s: 95% of 1055 calls
    # are reached within b.
    assert monitor.statements_p95(before, after) == 100.0


# --- the playbook: messages, reports, the stop ----------------------------------------------------


def test_production_run_sends_messages_and_writes_both_reports(
    fresh_db: dict[str, Any], out_dirs: dict[str, str], receiver: Any
) -> None:
    """Done-when of issue 6: production, approval, webhook and e-mail, sampler -> messages and reports."""
    result = run_playbook(MIGRATE, fresh_db, {
        "phase": "all", "approved_by": "Jane Doe (DBA)", **out_dirs,
        "migration_notify_webhook_url": receiver.url,
        "migration_notify_email_to": ["ops@example.test"],
        "migration_notify_smtp_host": "127.0.0.1", "migration_notify_smtp_port": receiver.smtp_port,
        "migration_notify_smtp_secure": "never",
        "migration_monitor_interval_s": 0.2, "migration_notify_interval_s": 0.5,
    }, env_name="production")
    assert result.returncode == 0, playbook_output(result)

    messages = receiver.messages()
    events = [m["event"] for m in messages]
    for phase in "123456":
        started = [m for m in messages if m["event"] == "phase_started" and m["phase"] is None
                   and f"phase {phase} " in m["text"]]
        finished = [m for m in messages if m["event"] == "phase_finished" and f"phase {phase} " in m["text"]]
        assert len(started) == 1 and len(finished) == 1, events
    assert "status" in events  # the sampler's periodic status during a long phase
    assert events[-1] == "summary" and "migrate succeeded" in messages[-1]["text"]
    for m in messages:
        assert m["environment"] == "production" and m["host"] == "testdb" and m["database"] == fresh_db["dbname"]
        assert m["text"].startswith(f"[production] migrate on testdb ({fresh_db['dbname']}): ")
    status = next(m for m in messages if m["event"] == "status")
    assert status["phase"] in ("1", "3", "4") and "connections" in status["text"]
    assert "applied in" in next(m for m in messages if m["event"] == "phase_finished")["text"]

    mails = receiver.mails()
    assert len(mails) == len([e for e in events if e != "status"])  # the sampler posts to webhook and log
    assert mails[-1]["to"] == ["<ops@example.test>"] and "migrate succeeded" in mails[-1]["subject"]

    report, markdown, path = the_report(out_dirs)
    assert path.name.endswith("-production-migrate-testdb.json")
    assert report["outcome"] == "succeeded" and report["approved_by"] == "Jane Doe (DBA)"
    assert [p["phase"] for p in report["phases"]] == list("123456")
    assert all(p["status"] == "succeeded" and p["duration_s"] > 0 for p in report["phases"])
    assert report["phases"][0]["rows_affected"] > 0
    assert report["validation"]["passed"] is True and len(report["validation"]["checks"]) > 10
    kinds = [s["kind"] for s in report["monitoring"]["samples"]]
    # Between two phases one sample serves as the first one's after and the next one's before.
    assert kinds.count("baseline") == 1 and kinds.count("after") == 6 and "sample" in kinds, kinds
    assert "before" not in kinds, kinds
    assert report["monitoring"]["baseline"]["kind"] == "baseline"
    assert "pg_stat_statements is not installed" in report["monitoring"]["pg_stat_statements"]
    assert report["alerts"] == []
    channels = {n["event"]: n["channels"] for n in report["notifications"]}
    assert channels["phase_started"] == {"webhook": "ok", "log": "ok", "email": "ok"}
    for heading in ("## Phases", "## Validation", "## Alerts", "## Metrics", "## Approvals", "## Notifications"):
        assert heading in markdown
    announcement = path.with_name(path.stem + "-announcement.md").read_text()
    linked = query(fresh_db, "SELECT count(*) FROM client_app_overrides WHERE marketplace_module_id IS NOT NULL")[0][0]
    assert f"({linked} module settings linked" in announcement
    assert "Subject: HT-036 Integration Complete" in announcement

    # The ledger keeps each phase's monitoring and the baseline; no secret anywhere.
    details = query(fresh_db, "SELECT details FROM migration_ledger.history WHERE phase = '1'")[0][0]
    assert details["monitoring"]["baseline"]["probe"]["p95_ms"] > 0
    secret = fresh_db["password"]
    for file in Path(out_dirs["migration_report_dir"]).rglob("*"):
        if file.is_file():
            assert secret not in file.read_text(errors="replace"), file
    assert secret not in json.dumps(messages) and secret not in json.dumps(mails)
    assert secret not in result.stdout


def test_dead_webhook_never_fails_the_run(fresh_db: dict[str, Any], out_dirs: dict[str, str]) -> None:
    """A webhook nobody listens on: the run succeeds, the failure is reported, the log has all."""
    dead = f"http://127.0.0.1:{pgcluster.free_port()}/gone"
    result = run_playbook(MIGRATE, fresh_db, {"phase": 1, **out_dirs, "migration_notify_webhook_url": dead,
                                              "migration_notify_webhook_timeout_s": 2})
    assert result.returncode == 0, playbook_output(result)
    assert "not delivered by webhook" in result.stdout and "The migration goes on" in result.stdout
    assert dead not in result.stdout  # the URL is a secret
    report, markdown, _ = the_report(out_dirs)
    assert report["outcome"] == "succeeded"
    webhook = [n["channels"]["webhook"] for n in report["notifications"]]
    assert webhook and all(w.startswith("failed") for w in webhook)
    assert all(n["channels"]["log"] == "ok" for n in report["notifications"])
    assert "webhook: failed" in markdown


def test_pool_alert_stops_the_run_with_the_reason_in_the_report(
    fresh_db: dict[str, Any], out_dirs: dict[str, str], receiver: Any
) -> None:
    """Real connections push pool utilisation over 85%: alert, stop before the next phase, reason."""
    first = run_playbook(MIGRATE, fresh_db, {"phase": 1, **out_dirs})
    assert first.returncode == 0, playbook_output(first)
    out_dirs = {**out_dirs, "migration_report_dir": out_dirs["migration_report_dir"] + "-second-run"}
    held = []
    try:
        for _ in range(88):
            held.append(connect(fresh_db))
        result = run_playbook(MIGRATE, fresh_db, {
            "phase": "all", **out_dirs, "migration_alert_stops_run": True,
            "migration_notify_webhook_url": receiver.url})
    finally:
        for conn in held:
            conn.close()
    assert result.returncode != 0, playbook_output(result)
    assert "stopped before phase 2" in result.stdout and "connection pool utilisation" in result.stdout
    applied = query(fresh_db, "SELECT phase FROM migration_ledger.history WHERE status = 'succeeded' ORDER BY 1")
    assert applied == [("1",)]  # nothing after the stop
    report, markdown, _ = the_report(out_dirs)
    assert report["outcome"] == "stopped"
    assert "stopped before phase 2" in report["reason"] and "connection pool utilisation" in report["reason"]
    assert [a["metric"] for a in report["alerts"]] == ["pool_utilisation_pct"]
    assert report["alerts"][0]["value"] > 85
    assert "**Reason:** stopped before phase 2" in markdown
    events = [m["event"] for m in receiver.messages()]
    assert events == ["alert", "stopped", "summary"], events


def test_integrity_violation_stops_before_the_next_phase(
    fresh_db: dict[str, Any], out_dirs: dict[str, str]
) -> None:
    """An abort criterion (an override linked to a module that does not exist) stops the run by
    default, before phase 4 starts, and the report says why."""
    for phase in (1, 2, 3):
        first = run_playbook(MIGRATE, fresh_db, {"phase": phase, **out_dirs})
        assert first.returncode == 0, playbook_output(first)
    query(fresh_db, """UPDATE client_app_overrides SET marketplace_module_id = gen_random_uuid()
                        WHERE id = (SELECT id FROM client_app_overrides ORDER BY id LIMIT 1)""")
    out_dirs = {**out_dirs, "migration_report_dir": out_dirs["migration_report_dir"] + "-second-run"}
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **out_dirs})
    assert result.returncode != 0, playbook_output(result)
    report, _, _ = the_report(out_dirs)
    assert report["outcome"] == "stopped"
    assert "integrity violation: 1 overrides linked to a marketplace module that does not exist" in report["reason"]
    assert query(fresh_db, "SELECT count(*) FROM migration_ledger.history WHERE phase = '4'") == [(0,)]
