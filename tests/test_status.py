"""status.yml's JSON (docs/operations.md#status-as-json): written beside the text on every run,
and alone on stdout with -e status_format=json, so that `| jq .` reads it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    PLAYBOOK_TIMEOUT_S,
    REPO_ROOT,
    _ansible_env,
    _ansible_playbook,
    playbook_output,
    query,
    run_playbook,
    write_inventory,
)

STATUS = "playbooks/status.yml"


def status_json(db: dict[str, Any], tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook playbooks/status.yml -e status_format=json`, as typed in the checkout."""
    inventory = write_inventory(tmp_path, db)
    return subprocess.run(
        [_ansible_playbook(), "-i", str(inventory), STATUS, "-e", "status_format=json",
         "-e", f"migration_report_dir={tmp_path / 'reports'}", *extra],
        cwd=REPO_ROOT, env=_ansible_env(), capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S, check=False)


def test_status_json_alone_on_stdout(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    for phase in (1, 2, 3):
        done = run_playbook("playbooks/migrate.yml", fresh_db, {"phase": phase,
                                                               "migration_report_dir": str(tmp_path / "r"),
                                                               "migration_backup_dir": str(tmp_path / "b")})
        assert done.returncode == 0, playbook_output(done)
    result = status_json(fresh_db, tmp_path)
    assert result.returncode == 0, playbook_output(result)
    document = json.loads(result.stdout)  # nothing else on stdout
    assert document["schema_version"] == 1
    db = document["databases"]["testdb"]
    assert db["error"] is None and db["database"] == fresh_db["dbname"]
    assert db["applied"] == ["1", "2", "3"]
    assert {p: v["state"] for p, v in db["phases"].items()} == {"1": "applied", "2": "applied", "3": "applied"}
    assert db["transition"]["state"] == "open"
    assert db["run_lock"] == {"held": False, "holder": None}
    # Deferred work: the keys are there whether or not the ledger has a queue to read.
    assert {"available", "depth", "oldest_age_s", "drained_by"} <= set(db["deferred"])
    # The ledger's space, table by table, phase 3's plan among them.
    assert db["ledger_size"]["bytes"] == sum(v for v in db["ledger_size"]["tables"].values())
    assert db["ledger_size"]["tables"]["history"] > 0
    assert db["server_version_num"] >= 130000  # pgmigrate_info's own fields, as it returns them
    # The progress went to stderr, where the operator still sees it.
    assert "PLAY RECAP" in result.stderr and "PLAY RECAP" not in result.stdout
    # The same document was written beside it.
    [written] = (tmp_path / "reports").glob("*-local-status-testdb.json")
    assert json.loads(written.read_text())["databases"]["testdb"]["phases"] == db["phases"]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_status_json_through_jq(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, fresh_db)
    result = subprocess.run(
        f"{_ansible_playbook()} -i {inventory} {STATUS} -e status_format=json | jq -e .databases.testdb.phases",
        shell=True, cwd=REPO_ROOT, env=_ansible_env(), capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S,
        check=False)
    assert result.returncode == 0, playbook_output(result)
    assert json.loads(result.stdout) == {}


def test_status_text_writes_the_json_too(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    result = run_playbook(STATUS, fresh_db, {"migration_report_dir": str(tmp_path / "reports")})
    assert result.returncode == 0, playbook_output(result)
    assert "no run in progress" in result.stdout and "the ledger holds 0 Bytes" in result.stdout
    [written] = (tmp_path / "reports").glob("*-local-status-testdb.json")
    assert f"JSON in {written}" in result.stdout
    assert json.loads(written.read_text())["databases"]["testdb"]["phases"] == {}


def test_unreadable_database_still_gives_json(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    result = status_json({**fresh_db, "password": "wrong"}, tmp_path)
    assert result.returncode == 2, playbook_output(result)
    db = json.loads(result.stdout)["databases"]["testdb"]
    assert db["error"] and "wrong" not in result.stdout + result.stderr


def test_deferred_work_flows_in_where_the_ledger_has_it(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """Where the ledger has migration_ledger.transition_queue_state() (the transition's queue), its
    columns reach `deferred` as they are, extra ones included; without it the keys are null."""
    query(fresh_db, """CREATE SCHEMA migration_ledger;
                       CREATE FUNCTION migration_ledger.transition_queue_state(
                           OUT depth bigint, OUT oldest_age_s numeric, OUT drained_by text, OUT paused boolean)
                       LANGUAGE sql STABLE AS $$ SELECT 42::bigint, 1.5, 'the sync', false $$""")
    result = status_json(fresh_db, tmp_path)
    assert result.returncode == 0, playbook_output(result)
    deferred = json.loads(result.stdout)["databases"]["testdb"]["deferred"]
    assert deferred == {"available": True, "depth": 42, "oldest_age_s": 1.5, "drained_by": "the sync",
                        "paused": False}
