"""The in-process runner (plugins/action/pgmigrate_direct.py) at both ends of the ansible-core range
it was tested with, and outside it (docs/collection.md). The high end is the project's venv
(the rest of the suite); tools/ensure-ansible-versions.sh builds the others into .ansible-core/:
2.19.1, the low end, runs our modules in process; 2.19.0 (before AnsibleModule._record_module_result)
and 2.18.19, outside the range, run them as module processes by themselves, say so in one
warning, and the migration's phase 1 succeeds all the same."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from helpers import PLAYBOOK_TIMEOUT_S, REPO_ROOT, playbook_output, write_inventory
from rollback_helpers import applied

ROOT = Path(os.environ.get("PGMIGRATE_ANSIBLE_ROOT", REPO_ROOT / ".ansible-core"))
FALLBACK = "its modules run as module processes"


def ansible_at(version: str) -> Path:
    venv = ROOT / version
    if not (venv / ".installed").is_file():
        pytest.fail(f"no ansible-core {version} in {venv} (make pytest runs tools/ensure-ansible-versions.sh)")
    return venv


def migrate_phase_1(venv: Path, db: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """playbooks/migrate.yml -e phase=1 from the checkout, with the ansible-core of `venv`; the
    collections from the checkout and from the project venv's site-packages."""
    inventory = write_inventory(tmp_path, db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([str(REPO_ROOT / "collections"),
                                                         sysconfig.get_paths()["purelib"]]),
               ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(venv / "bin" / "ansible-playbook"), "-vvv", "-i", str(inventory), "playbooks/migrate.yml",
           "-e", "phase=1", "-e", f"ansible_python_interpreter={venv / 'bin' / 'python'}",
           "-e", f"migration_report_dir={tmp_path / 'reports'}", "-e", f"migration_backup_dir={tmp_path / 'backups'}"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S,
                          check=False)


def module_processes(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Our modules Ansible packaged as module processes (-vvv prints "Using module file"), but
    the monitoring sampler, an async task, which is one on every version."""
    return [line for line in result.stdout.splitlines()
            if "Using module file" in line and "/pgmigrate_" in line and "/pgmigrate_metrics.py" not in line]


def test_the_low_end_runs_in_process(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    result = migrate_phase_1(ansible_at("2.19.1"), fresh_db, tmp_path)
    out = playbook_output(result)
    assert result.returncode == 0, out
    assert "ansible-playbook [core 2.19.1]" in result.stdout
    assert applied(fresh_db) == ["1"]
    assert module_processes(result) == [], out
    assert "[WARNING]: agency.pgmigrate" not in out


@pytest.mark.parametrize(("version", "why"), [
    # Before the hook that hands the runner the result (AnsibleModule._record_module_result).
    ("2.19.0", "ansible-core 2.19.0 is outside the range the in-process runner was tested with (>=2.19.1,<2.20.0)"),
    ("2.18.19", "ansible-core 2.18.19 is outside the range the in-process runner was tested with (>=2.19.1,<2.20.0)"),
])
def test_otherwise_it_falls_back_once_and_succeeds(fresh_db: dict[str, Any], tmp_path: Path, version: str,
                                                   why: str) -> None:
    result = migrate_phase_1(ansible_at(version), fresh_db, tmp_path)
    out = playbook_output(result)
    assert result.returncode == 0, out
    assert f"ansible-playbook [core {version}]" in result.stdout
    assert applied(fresh_db) == ["1"]
    # Every one of our modules ran as a module process, and the run said why, once.
    assert len(module_processes(result)) >= 5, out
    # (2.19 also keeps it in the task's result, which -vvv prints; ansible-core 2.18 wraps a
    # warning to the terminal's width: compared without white space)
    assert out.count("[WARNING]: agency.pgmigrate:") == 1, out
    assert "".join(f"[WARNING]: agency.pgmigrate: {why}: {FALLBACK}".split()) in "".join(out.split()), out
