"""Prometheus, with the real servers (Debian's prometheus and prometheus-pushgateway, on free
ports): the run's progress and the watch's metrics pushed to the Pushgateway and written as a
node_exporter textfile; the go/no-go checkpoints and the watch reading the application's p95
and error ratio from a Prometheus that scrapes an exporter the test serves (tests/prometheus_helpers.py):
healthy, the run goes on; slow, it stops at the next checkpoint; a query that returns nothing
is reported, never taken as healthy."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from helpers import query, run_playbook
from prometheus_helpers import prometheus_fixture, pushgateway_fixture  # noqa: F401 - fixtures
from rehearsal_helpers import out_of

# Short windows: the test's exporter changes within seconds (the defaults use [5m]).
P95 = "1000 * histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[10s])))"
ERRORS = '100 * sum(rate(http_requests_total{code=~"5.."}[10s])) / sum(rate(http_requests_total[10s]))'


def promql(url: str, expr: str) -> float | None:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5) as r:
        result = json.load(r)["data"]["result"]
    try:
        return float(result[0]["value"][1]) if result else None
    except ValueError:
        return None


def settle(url: str, expr: str, ok: Any, timeout_s: float = 90) -> None:
    """Wait until Prometheus has scraped what the exporter now says."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = promql(url, expr)
        if value is not None and ok(value):
            return
        time.sleep(0.5)
    raise AssertionError(f"{expr} never settled (last {promql(url, expr)})")


def gateway_metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        return r.read().decode()


def signals(prom: dict[str, Any], gateway: dict[str, Any], textfiles: Path) -> dict[str, Any]:
    return {"migration_prometheus_url": prom["url"], "migration_prometheus_p95_query": P95,
            "migration_prometheus_error_query": ERRORS, "migration_prometheus_pushgateway_url": gateway["url"],
            "migration_prometheus_textfile_dir": str(textfiles)}


def test_a_slow_application_stops_the_run_at_the_next_checkpoint(
        fresh_db: dict[str, Any], prometheus: dict[str, Any], pushgateway: dict[str, Any], tmp_path: Path) -> None:
    app = prometheus["exporter"]
    app.set(latency_s=0.03, error_ratio=0.0)
    settle(prometheus["url"], P95, lambda v: v < 100)
    extra = {**signals(prometheus, pushgateway, tmp_path / "textfiles"),
             "migration_report_dir": str(tmp_path / "reports"), "migration_backup_dir": str(tmp_path / "backups")}
    healthy = run_playbook("playbooks/migrate.yml", fresh_db, {**extra, "phase": "1"})
    assert healthy.returncode == 0, out_of(healthy)
    pushed = gateway_metrics(pushgateway["url"])
    assert 'pgmigrate_phase{database="' in pushed and 'instance="testdb-migrate"' in pushed
    assert [line for line in pushed.splitlines() if line.startswith("pgmigrate_phase{")][0].endswith(" 1")
    textfile = (tmp_path / "textfiles" / "pgmigrate_testdb_migrate.prom").read_text()
    assert "# TYPE pgmigrate_probe_p95_ms gauge" in textfile and "pgmigrate_phase{" in textfile
    # The application turns slow: 3 s per request, over the 2 s threshold.
    app.set(latency_s=3.0)
    settle(prometheus["url"], P95, lambda v: v > 2000)
    slow = run_playbook("playbooks/migrate.yml", fresh_db, {**extra, "phase": "all"})
    assert slow.returncode != 0
    assert "stopped after phase 2, before the next phase: API response time p95" in out_of(slow)
    assert query(fresh_db, """SELECT array_agg(phase ORDER BY id) FROM migration_ledger.history""")[0][0] == ["1", "2"]
    pushed = gateway_metrics(pushgateway["url"])
    stopped = [line for line in pushed.splitlines() if line.startswith("pgmigrate_run_stopped{")]
    assert stopped and stopped[0].endswith(" 1"), stopped
    app.set(latency_s=0.03)


def test_the_watch_reads_prometheus_and_never_takes_nothing_as_healthy(
        migrated_db: dict[str, Any], prometheus: dict[str, Any], pushgateway: dict[str, Any], tmp_path: Path) -> None:
    app = prometheus["exporter"]
    app.set(latency_s=0.03, error_ratio=0.0)
    settle(prometheus["url"], P95, lambda v: v < 100)
    extra = {**signals(prometheus, pushgateway, tmp_path / "textfiles"), "migration_report_dir": str(tmp_path),
             # A query for a series nobody exports: nothing comes back.
             "migration_prometheus_error_query": 'sum(rate(no_such_requests_total[10s]))'}
    result = run_playbook("playbooks/watch.yml", migrated_db, extra)
    assert result.returncode == 0, out_of(result)
    row = query(migrated_db, "SELECT metrics, alerts FROM migration_ledger.watch_samples ORDER BY id DESC LIMIT 1")[0]
    assert 0 < row[0]["app_p95_ms"] < 100 and row[0]["app_error_pct"] is None
    messages = [a["message"] for a in row[1]]
    assert any("API error ratio unknown: the query returned nothing" in m for m in messages), messages
    pushed = gateway_metrics(pushgateway["url"])
    assert 'instance="testdb-watch"' in pushed and "pgmigrate_watch_alerts{" in pushed
    assert "pgmigrate_app_p95_ms{" in pushed
