"""plugins/action/pgmigrate_direct.py: our modules run in Ansible's worker process by default,
as module processes with pgmigrate_direct_execution: false. Both ways must give the play the
same result - values, a failure's message, check mode, the password masked - and the switch
must really switch (Ansible prints "Using module file" at -vvv only for a module process)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, playbook_output, run_playbook_at

PLAY = """
- name: Ask pgmigrate_info, print what it returned
  hosts: databases
  gather_facts: false
  module_defaults:
    pgmigrate_info: &conn
      db_host: "{{ migration_db_host }}"
      db_port: "{{ migration_db_port }}"
      db_name: "{{ migration_db_name }}"
      db_user: "{{ migration_db_user }}"
      db_password: "{{ migration_db_password }}"
    pgmigrate_sql: *conn
  tasks:
    - name: Inspect the database
      pgmigrate_info:
        ledger: true
        db_password: "{{ migration_db_password if not wrong_password | bool else 'not-the-password-4471' }}"
      register: info
      ignore_errors: true
    - name: A change, in check mode when the play is
      pgmigrate_sql:
        files: ["{{ sql_file }}"]
      register: sql
      when: not wrong_password | bool
    - name: Write the results down
      ansible.builtin.copy:
        content: "{{ {'info': info, 'sql': sql | default({})} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      check_mode: false
"""


def run(tmp_path: Path, db: dict[str, Any], direct: bool, wrong_password: bool = False,
        check: bool = False, extra_args: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    sql_file = tmp_path / "create.sql"
    sql_file.write_text("CREATE TABLE IF NOT EXISTS direct_probe (id int);\n")
    result = run_playbook_at(
        REPO_ROOT, str(play), db,
        {"pgmigrate_direct_execution": direct, "wrong_password": wrong_password, "sql_file": str(sql_file),
         "result_file": str(tmp_path / "result.json")},
        check=check, extra_args=["-vvv", *extra_args])
    assert result.returncode == 0, playbook_output(result)
    return json.loads((tmp_path / "result.json").read_text()), result.stdout


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    drop = {"invocation", "database_size_bytes", "seconds", "steps"}
    return {k: v for k, v in result.items() if k not in drop}


@pytest.mark.parametrize("check", [False, True])
def test_both_ways_give_the_same_result(tmp_path: Path, fresh_db: dict[str, Any], check: bool) -> None:
    direct, direct_out = run(tmp_path, fresh_db, direct=True, check=check)
    process, process_out = run(tmp_path, fresh_db, direct=False, check=check)
    # The switch switches: only the module process is a "module file" Ansible runs.
    assert "pgmigrate_info.py" not in "".join(x for x in direct_out.splitlines() if "Using module file" in x)
    assert "Using module file" in process_out and "pgmigrate_info.py" in process_out
    assert comparable(direct["info"]) == comparable(process["info"])
    assert direct["info"]["ledger"]["ledger_exists"] is False
    assert comparable(direct["sql"]) == comparable(process["sql"])
    assert direct["sql"]["changed"] is True
    if check:
        assert direct["sql"]["msg"] == "would run 1 SQL file(s)"
    # Both runs' arguments were masked: the password is nowhere in the output.
    for out in (direct_out, process_out):
        assert fresh_db["password"] not in out


def test_a_failure_reads_the_same_both_ways(tmp_path: Path, fresh_db: dict[str, Any]) -> None:
    direct, direct_out = run(tmp_path, fresh_db, direct=True, wrong_password=True)
    process, process_out = run(tmp_path, fresh_db, direct=False, wrong_password=True)
    assert direct["info"]["failed"] is True and process["info"]["failed"] is True
    assert direct["info"]["msg"] == process["info"]["msg"]
    assert "password authentication failed" in direct["info"]["msg"]
    for out in (direct_out, process_out):
        assert "not-the-password-4471" not in out


@pytest.mark.skipif(os.geteuid() != 0, reason="become (su to root) without a password needs root")
def test_become_runs_a_module_process(tmp_path: Path, fresh_db: dict[str, Any]) -> None:
    """A task under become switches user, which only a module process can: such a task is not
    run in the worker, whatever pgmigrate_direct_execution says."""
    result, out = run(tmp_path, fresh_db, direct=True, extra_args=("--become", "--become-method=su"))
    assert "Using module file" in out and "pgmigrate_info.py" in out
    assert not result["info"].get("failed") and result["info"]["server_version_num"] >= 130000
    assert result["sql"]["changed"] is True
