"""A playbook run that matches no database fails, naming the group `databases` and how to put
hosts in it (playbooks/common/require_databases.yml), instead of Ansible's warning, a skipped
play and exit 0; the database is left as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, _ansible_env, _ansible_playbook, db_snapshot, inventory_data, snapshot_diff

PLAYBOOKS = sorted(p.name for p in (REPO_ROOT / "playbooks").glob("*.yml"))


def run(inventory: dict[str, Any], playbook: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    return subprocess.run(
        [_ansible_playbook(), "-i", str(path), f"playbooks/{playbook}", "-e", "phase=all", *args],
        cwd=REPO_ROOT, env=_ansible_env(), capture_output=True, text=True, timeout=300, check=False)


def elsewhere(db: dict[str, Any]) -> dict[str, Any]:
    """The test database's host, in a group of another name (a typo, or the inventory of
    another project)."""
    hosts = inventory_data(db)["all"]["children"]["databases"]["hosts"]
    return {"all": {"children": {"postgres_servers": {"hosts": hosts}}}}


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, text
    for needle in ("No database to run on", "group `databases`", "all.children.databases.hosts",
                   "Nothing was changed", *needles):
        assert needle in text, text


def test_every_playbook_is_guarded() -> None:
    """Every playbook imports the guard as its first play."""
    for name in PLAYBOOKS:
        plays = (REPO_ROOT / "playbooks" / name).read_text()
        first = plays.index("\n- ")
        assert plays[first:].startswith("\n- name: Refuse a run that matches no database\n"
                                        "  ansible.builtin.import_playbook: common/require_databases.yml"), name


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_hosts_in_another_group(fresh_db: dict[str, Any], tmp_path: Path, playbook: str) -> None:
    """The database's host is in the inventory, but not in `databases`: refused, untouched."""
    before = db_snapshot(fresh_db)
    assert_refused(run(elsewhere(fresh_db), playbook, tmp_path), "holds 0 hosts")
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_limit_outside_the_group(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """--limit names a host of the inventory that is no database: refused, naming the limit."""
    inventory = inventory_data(fresh_db)
    inventory["all"]["children"]["monitoring"] = {"hosts": {"grafana": {"ansible_connection": "local"}}}
    before = db_snapshot(fresh_db)
    assert_refused(run(inventory, "migrate.yml", tmp_path, "--limit", "grafana"),
                   "no host matching --limit grafana (it matches grafana)")
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []


def test_empty_inventory(tmp_path: Path) -> None:
    """An inventory without hosts (only Ansible's implicit localhost): refused."""
    assert_refused(run({"all": {"hosts": {}}}, "migrate.yml", tmp_path), "holds 0 hosts")


def test_limit_inside_the_group_runs(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """The guard lets a run through when the limit names a database (status: read-only)."""
    result = run(inventory_data(fresh_db), "status.yml", tmp_path, "--limit", "testdb")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no run in progress" in result.stdout
