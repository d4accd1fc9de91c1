"""After converge: the first rollout stopped at the broken database's batch and said so; the
second, identical command completed the fleet; a third changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import psycopg2.extensions


def summaries(fleet_dir: Path) -> list[dict]:
    files = sorted((fleet_dir / "reports").glob("*-migrate-fleet.json"))
    return [json.loads(f.read_text()) for f in files]


def by_host(summary: dict) -> dict[str, dict]:
    return {row["host"]: row for row in summary["databases"]}


def test_first_rollout_stopped_before_the_next_batch(fleet_dir: Path) -> None:
    first = by_host(summaries(fleet_dir)[0])
    assert first["fleet-1"]["status"] == "done"  # the canary
    assert first["fleet-2"]["status"] == "done"  # fleet-3's batch mate finishes its work
    assert first["fleet-3"]["status"] == "failed" and first["fleet-3"]["failed_phase"] == "preflight"
    assert "client_deployments" in first["fleet-3"]["message"]
    assert first["fleet-4"]["status"] == "not started"
    log = (fleet_dir / "first-run.log").read_text()
    assert re.search(r"fleet-3: failed in preflight", log), "the summary on screen names the failure"


def test_second_rollout_completed_the_fleet(fleet_dir: Path, dbs: dict[str, psycopg2.extensions.connection]) -> None:
    second = summaries(fleet_dir)[1]
    assert second["totals"] == {"databases": 4, "done": 4, "failed": 0, "not_started": 0, "validation_passed": 4}
    for name, conn in dbs.items():
        with conn.cursor() as cur:
            cur.execute("""SELECT array_agg(phase ORDER BY phase) FROM (
                             SELECT DISTINCT ON (phase) phase, direction FROM migration_ledger.history
                              WHERE status = 'succeeded' AND phase ~ '^[1-6]$'
                              ORDER BY phase, id DESC) s WHERE direction = 'apply'""")
            assert cur.fetchone()[0] == ["1", "2", "3", "4", "5", "6"], name


def test_databases_done_in_the_first_rollout_were_skipped_by_their_ledgers(
    dbs: dict[str, psycopg2.extensions.connection],
) -> None:
    for name in ("fleet-1", "fleet-2"):
        with dbs[name].cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT run_id) FROM migration_ledger.history WHERE phase ~ '^[1-6]$'")
            assert cur.fetchone() == (6, 1), f"{name} ran its phases once, in one run"


def test_a_third_rollout_changes_nothing(fleet_dir: Path) -> None:
    log = (fleet_dir / "second-run.log").read_text()
    command = [
        "ansible-playbook",
        "-i",
        str(fleet_dir / "inventory.yml"),
        "playbooks/migrate.yml",
        "-e",
        "phase=all",
        "-e",
        f"migration_report_dir={fleet_dir}/reports-third",
    ]
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = {**os.environ, "ANSIBLE_CONFIG": str(project / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    recap = re.findall(r"^(fleet-\d)\s+: ok=\d+\s+changed=(\d+)", plain, re.M)
    assert sorted(recap) == [(f"fleet-{i}", "0") for i in range(1, 5)], recap
    assert "fleet-4" in log
