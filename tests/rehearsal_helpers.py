"""Helpers of the backup, clone and rehearsal tests: a second throwaway cluster (the staging
server), inventories holding a production host and a staging host, and running playbooks against
them.

    staging_cluster       (fixture, module)  a cluster started for the module, destroyed after it
    staging_db            (fixture)          {"host", "port", ...} of a database name on it (absent)
    run_two_hosts(...)    ansible-playbook with a `prod` host (env production) and a `staging` host
                          (env staging, clone_source prod); returns the CompletedProcess
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import LOADED_MACHINE_ABORT, REPO_ROOT, connect, make_cluster_tempdir, pgcluster
from psycopg2 import sql

TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def staging_cluster() -> Iterator[dict[str, Any]]:
    """A second cluster: the staging server (its roles differ from the source's cluster)."""
    base = make_cluster_tempdir("pytest-staging-")
    datadir = base / "data"
    password = f"staging-{secrets.token_hex(8)}"
    try:
        yield pgcluster.start_cluster(datadir, password=password)
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def staging_db(staging_cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Connection info of a staging database (not created: the clone creates it); dropped after."""
    db = {k: staging_cluster[k] for k in ("host", "port", "user", "password")}
    db["dbname"] = f"staging_{uuid.uuid4().hex[:10]}"
    try:
        yield db
    finally:
        drop(db)


def drop(db: dict[str, Any]) -> None:
    admin = connect({**db, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db["dbname"])))
    finally:
        admin.close()


def database_exists(db: dict[str, Any]) -> bool:
    admin = connect({**db, "dbname": "postgres"})
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db["dbname"],))
            return cur.fetchone() is not None
    finally:
        admin.close()


def databases_like(db: dict[str, Any], pattern: str) -> list[str]:
    admin = connect({**db, "dbname": "postgres"})
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (pattern,))
            return [r[0] for r in cur.fetchall()]
    finally:
        admin.close()


def host_vars(db: dict[str, Any], env_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "migration_db_host": db["host"],
        "migration_db_port": int(db["port"]),
        "migration_db_name": db["dbname"],
        "migration_db_user": db["user"],
        "migration_db_password": db["password"],
        "migration_env": env_name,
        **LOADED_MACHINE_ABORT,
        "drain_method": "none",  # as helpers.inventory_data: no worker behind every database migrated
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        **extra,
    }


def two_host_inventory(source: dict[str, Any], staging: dict[str, Any], staging_env: str = "staging",
                       clone_source: str | None = "prod", extra_hosts: dict[str, dict] | None = None
                       ) -> dict[str, Any]:
    staging_extra = {"clone_source": clone_source} if clone_source is not None else {}
    hosts = {"prod": host_vars(source, "production"), "staging": host_vars(staging, staging_env, **staging_extra)}
    hosts.update(extra_hosts or {})
    return {"all": {"children": {"databases": {"hosts": hosts}}}}


def run_with_inventory(playbook: str, inventory: dict[str, Any], extra_vars: dict[str, Any] | None = None,
                       extra_args: list[str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """ansible-playbook from the repository root with this inventory (JSON is YAML)."""
    workdir = Path(tempfile.mkdtemp(prefix="run-rehearsal-"))
    try:
        (workdir / "hosts.yml").write_text(json.dumps(inventory, indent=2) + "\n")
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "hosts.yml")]
        if extra_vars:
            (workdir / "extra.json").write_text(json.dumps(extra_vars))
            cmd += ["-e", f"@{workdir / 'extra.json'}"]
        if check:
            cmd.append("--check")
        cmd += [*(extra_args or []), str(REPO_ROOT / playbook)]
        env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_FORCE_COLOR"}
        env.update({"ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_RETRY_FILES_ENABLED": "0",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def out_of(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr, with the YAML callback's line wrapping undone (phrases stay whole)."""
    return " ".join((result.stdout + result.stderr).split())


def output_dirs(tmp_path: Path) -> dict[str, str]:
    """Reports and backups of a run, kept out of the repository."""
    return {"migration_report_dir": str(tmp_path / "reports"), "migration_backup_dir": str(tmp_path / "backups")}


__all__ = ["database_exists", "databases_like", "drop", "host_vars", "out_of", "output_dirs",
           "run_with_inventory", "staging_cluster", "staging_db", "two_host_inventory"]
