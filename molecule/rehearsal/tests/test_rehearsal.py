"""After converge: a go for the healthy source, a no-go naming integration_events for the broken
one, staging replaced by the clone and rolled back to it, both sources identical before and after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg2


def report(rehearsal_dir: Path, host: str) -> dict[str, Any]:
    [path] = (rehearsal_dir / "reports").glob(f"*-staging-rehearse-{host}-rehearsal.json")
    assert path.with_suffix(".md").is_file()
    return json.loads(path.read_text())


def query(cluster: dict[str, Any], dbname: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(host=cluster["host"], port=cluster["port"], user=cluster["user"],
                            password=cluster["password"], dbname=dbname, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_healthy_source_gives_go(rehearsal_dir: Path) -> None:
    r = report(rehearsal_dir, "staging")
    assert r["verdict"] == "go", r["reasons"]
    assert [p["phase"] for p in r["phases"]] == ["1", "2", "3", "4", "5", "6"]
    assert all(p["status"] == "succeeded" for p in r["phases"])
    assert r["validation"]["passed"] and r["fidelity"]["holds"] and r["alerts"] == []
    assert "staging: GO" in " ".join((rehearsal_dir / "rehearse.log").read_text().split())


def test_broken_source_gives_no_go_naming_the_cause(rehearsal_dir: Path) -> None:
    r = report(rehearsal_dir, "staging-broken")
    assert r["verdict"] == "no-go"
    assert "integration_events" in r["reason"] and "another shape" in r["reason"]
    assert r["phases"] == [] and r["fidelity"]["holds"]
    assert "staging-broken: NO-GO" in " ".join((rehearsal_dir / "rehearse.log").read_text().split())


def test_sources_are_identical_before_and_after(rehearsal_dir: Path, clusters: dict[str, dict[str, Any]]) -> None:
    for db in ("agency", "agency_broken"):
        before = json.loads((rehearsal_dir / f"source-{db}-before.json").read_text())
        after = json.loads((rehearsal_dir / f"source-{db}-after.json").read_text())
        assert before == after, f"the rehearsal changed production database {db}"
        assert query(clusters["source"], db, "SELECT to_regnamespace('migration_ledger') IS NULL") == [(True,)]


def test_staging_holds_the_rolled_back_clone(clusters: dict[str, dict[str, Any]]) -> None:
    staging = clusters["staging"]
    assert query(staging, "agency", "SELECT to_regclass('staging_marker') IS NULL") == [(True,)]
    assert query(staging, "agency", """SELECT count(*) FROM information_schema.columns
                                         WHERE table_name = 'client_app_overrides'
                                           AND column_name = 'marketplace_module_id'""") == [(0,)]
    directions = query(staging, "agency", "SELECT DISTINCT direction FROM migration_ledger.history ORDER BY 1")
    assert directions == [("apply",), ("rollback",)]
    source_counts = query(clusters["source"], "agency", "SELECT count(*) FROM client_app_overrides")
    assert query(staging, "agency", "SELECT count(*) FROM client_app_overrides") == source_counts
