"""The engine knows no table of HT-036 (issue 27): plugins/ and roles/ name none of the tables
and views of its manifest (migrations/ht036/manifest.yml: the prerequisites, the tables it
creates, the views it creates), in code, comments, docstrings and EXAMPLES alike. What is
HT-036's (the monitoring probe and integrity checks, the watch's metrics, the throttle's
tables, the briefing's, review's, preflight's and validator's table-specific content) comes
from its migration directory as SQL and data. And what was moved there is complete: every file
the manifest's engine sections name exists. None of this needs a database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO_ROOT, plugin

MIGRATION = REPO_ROOT / "migrations" / "ht036"
ENGINE = [REPO_ROOT / "plugins", REPO_ROOT / "roles"]
# The names issue 27's "done when" greps for: HT-036's prerequisite tables, new tables and views.
NAMED = {"client_app_overrides", "clients_enhanced", "marketplace_modules", "module_installations",
         "client_deployments", "orchestration_workflows", "workflow_executions", "handover_packages",
         "integration_events", "unified_client_dashboard", "module_integration_view", "workflow_progress_view"}


def manifest() -> dict[str, Any]:
    return yaml.safe_load((MIGRATION / "manifest.yml").read_text())


def test_the_names_are_the_manifests() -> None:
    """The grep's names are exactly HT-036's tables and views, as its manifest lists them."""
    m = manifest()
    assert set(m["prerequisites"]) | set(m["tables"]["new"]) | set(m["access"]["views"]) == NAMED


def engine_hits() -> list[str]:
    pattern = re.compile("|".join(sorted(NAMED)).encode())
    hits = []
    for root in ENGINE:
        for path in sorted(root.rglob("*")):
            # Bytecode is compiled from the sources checked here (and may be stale).
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(REPO_ROOT).as_posix()
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                if not pattern.search(line):
                    continue
                hits.append(f"{rel}:{number}: {line.decode('utf-8', 'replace').strip()}")
    return hits


def test_the_engine_names_no_table_of_ht036() -> None:
    """grep -rnE '<the twelve names>' plugins roles finds nothing: comments, docstrings and
    EXAMPLES included. What a module needs of a migration comes as a module parameter, from the
    manifest (docs/writing-a-migration.md)."""
    hits = engine_hits()
    assert hits == [], ("HT-036's tables named in the engine (move them into migrations/ht036/ and pass "
                        "them as module parameters):\n" + "\n".join(hits))


def named_files(m: dict[str, Any]) -> list[str]:
    """Every file the manifest's engine sections (monitor, watch, rollback, preflight, brief,
    report) name, relative to the migration directory."""
    files = [m["monitor"]["probe"], m["monitor"]["event_lag"]["file"]]
    files += [c["file"] for c in m["monitor"]["integrity"]]
    files += [q["file"] for key in ("queries", "error_types") for q in m["watch"][key]]
    files += [q["file"] for q in m["rollback"]["new_data"]["queries"]] + [m["rollback"]["dependents"]]
    files += list(m["preflight"]["orphans"])
    files += [m["brief"]["delete_rules"]["file"], m["brief"]["delete_rules"]["markdown"]]
    files += [m["report"]["announcement"]]
    return files


def test_every_file_the_manifest_names_exists() -> None:
    m = manifest()
    missing = [f for f in named_files(m) if not (MIGRATION / f).is_file()]
    assert missing == [], missing
    # And every file under those folders is named (no orphan left behind by a rename).
    folders = {Path(f).parts[0] for f in named_files(m)}
    present = {p.relative_to(MIGRATION).as_posix() for folder in folders
               for p in (MIGRATION / folder).rglob("*") if p.is_file()}
    assert present - set(named_files(m)) == set()


def test_the_monitor_section_loads(tmp_path: Path) -> None:
    """The engine reads HT-036's monitoring as the sampler does; a section naming a missing file
    or an unknown key is refused with what to fix."""
    monitor = plugin("module_utils", "pgmigrate_monitor")
    checks = monitor.monitor_checks(str(MIGRATION), manifest()["monitor"])
    assert checks["probe_sql"].rstrip().endswith("LIMIT 50")
    assert [c[0] for c in checks["integrity"]] == [c["name"] for c in manifest()["monitor"]["integrity"]]
    assert checks["event_lag"][:2] == ("integration_events", "processed_at")
    assert monitor.monitor_checks(None, {}) == {"probe_sql": "", "event_lag": None, "integrity": []}
    for bad, needle in (({"probe": "monitor/nope.sql"}, "cannot read"), ({"probes": "x"}, "unknown key")):
        with pytest.raises(monitor.MigrationError, match=needle):
            monitor.monitor_checks(str(tmp_path), bad)
