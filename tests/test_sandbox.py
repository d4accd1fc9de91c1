"""`make demo`'s sandbox from a checkout the `postgres` OS user cannot enter (docs/tests.md).

As root, PostgreSQL runs as `postgres`; a clone under /root (0700) used to fail with "the
'postgres' OS user ... cannot enter ...". The sandbox's data now lives under
/var/tmp/pgmigrate-sandbox-<uid>/, keyed by the checkout's path (roles/sandbox/defaults).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import psycopg2
import pytest
from helpers import PLAYBOOK_TIMEOUT_S, REPO_ROOT, _ansible_env_at, _ansible_playbook, pgcluster, playbook_output

# What `ansible-playbook playbooks/sandbox.yml` needs of the checkout (tools/ for pgcluster.py and
# the seed, inventories/ for the default inventory).
CLONE_ITEMS = ("ansible.cfg", "collections", "meta", "playbooks", "roles", "plugins", "files", "migrations", "tools",
               "inventories")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to the postgres OS user")
def test_sandbox_starts_from_a_clone_postgres_cannot_enter(tmp_path: Path) -> None:
    private = tmp_path / "root-home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)  # whatever the umask: the postgres OS user may not enter it
    clone = private / "pgmigrate"
    clone.mkdir()
    for item in CLONE_ITEMS:
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(source, clone / item, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, clone / item)
    key = hashlib.sha1(str(clone.resolve()).encode()).hexdigest()[:12]
    sandbox_dir = Path(f"/var/tmp/pgmigrate-sandbox-{os.geteuid()}/{key}-sandbox")
    datadir = sandbox_dir / "data"
    port = pgcluster.free_port()  # not 54329: a developer's own sandbox may hold it

    def sandbox(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_ansible_playbook(), "playbooks/sandbox.yml", "-e", f"sandbox_action={action}",
             "-e", "sandbox_scale=5", "-e", f"migration_db_port={port}"],
            cwd=clone, env=_ansible_env_at(clone), capture_output=True, text=True,
            timeout=PLAYBOOK_TIMEOUT_S, check=False)

    try:
        started = sandbox("reset")
        out = playbook_output(started)
        assert started.returncode == 0, out
        assert "cannot enter" not in out
        # It says where the data is, and the data is there, owned by postgres, outside the clone.
        assert f"data in {datadir}" in started.stdout, out
        assert datadir.stat().st_uid == pgcluster._pg_os_user().pw_uid
        assert not (clone / ".sandbox").exists()
        state = json.loads((sandbox_dir / "cluster.json").read_text())
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=state["password"],
                                dbname="agency")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM clients_enhanced")
                assert cur.fetchone()[0] == 5
        finally:
            conn.close()
        stopped = sandbox("stop")
        assert stopped.returncode == 0, playbook_output(stopped)
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(sandbox_dir, ignore_errors=True)
