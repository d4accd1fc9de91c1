"""The shared fixtures and helpers themselves: fresh_db and run_playbook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import TEMPLATE_DB
from helpers import connect, playbook_output, run_playbook

# A playbook outside the repository: run_playbook takes absolute paths too.
PROBE_PLAYBOOK = """\
- name: Probe the database the inventory points at
  hosts: databases
  gather_facts: false
  tasks:
    - name: Count clients
      community.postgresql.postgresql_query:
        login_host: "{{ migration_db_host }}"
        login_port: "{{ migration_db_port }}"
        login_user: "{{ migration_db_user }}"
        login_password: "{{ migration_db_password }}"
        login_db: "{{ migration_db_name }}"
        query: SELECT count(*) AS n FROM clients_enhanced
      register: probe
    - name: Compare with what the test expects
      ansible.builtin.assert:
        that:
          - probe.query_result[0].n == expected_clients
          - migration_env == expected_env
        fail_msg: "found {{ probe.query_result[0].n }} clients in {{ migration_env }}"
"""


def count_clients(db: dict[str, Any]) -> int:
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM clients_enhanced")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_fresh_db_is_a_private_copy_of_the_template(fresh_db: dict[str, Any]) -> None:
    assert fresh_db["dbname"] != TEMPLATE_DB
    assert count_clients(fresh_db) == 50
    conn = connect(fresh_db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM client_deployments")
            cur.execute("DELETE FROM clients_enhanced")
    finally:
        conn.close()
    assert count_clients(fresh_db) == 0
    assert count_clients({**fresh_db, "dbname": TEMPLATE_DB}) == 50


def test_run_playbook_targets_fresh_db(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PROBE_PLAYBOOK)
    result = run_playbook(
        str(playbook),
        fresh_db,
        extra_vars={"expected_clients": 50, "expected_env": "local"},
    )
    assert result.returncode == 0, playbook_output(result)
    assert "testdb" in result.stdout
    assert "failed=0" in result.stdout


def test_run_playbook_passes_env_check_and_extra_args(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PROBE_PLAYBOOK)
    result = run_playbook(
        str(playbook),
        fresh_db,
        extra_vars={"expected_clients": 50, "expected_env": "staging"},
        check=True,
        env_name="staging",
        extra_args=["--diff"],
    )
    assert result.returncode == 0, playbook_output(result)


def test_run_playbook_reports_failure(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PROBE_PLAYBOOK)
    result = run_playbook(
        str(playbook),
        fresh_db,
        extra_vars={"expected_clients": 51, "expected_env": "local"},
    )
    assert result.returncode != 0
    assert "found 50 clients in local" in result.stdout
