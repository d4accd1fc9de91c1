"""The repository is the collection agency.pgmigrate (docs/collection.md): `ansible-galaxy collection
build` packs it, `ansible-galaxy collection install` puts it into an empty collections path, and
from a directory outside the checkout, with no ansible.cfg of the checkout, `ansible-playbook
agency.pgmigrate.migrate -e phase=all` migrates a database with the SQL inside the installed
collection, its reports written in the directory it runs in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import PLAYBOOK_TIMEOUT_S, REPO_ROOT, playbook_output, write_inventory
from rollback_helpers import applied

BIN = Path(sys.executable).parent
# An archive of the roles, modules, SQL and playbooks is well under a megabyte; the venv, .pg or
# a stray dump would be hundreds.
MAX_ARCHIVE_BYTES = 2_000_000
# Never in the archive: the checkout's machinery and what runs leave behind.
NOT_PACKED = (".venv", ".pg", ".ansible-core", ".tools", ".git", ".sandbox", ".pytest_cache", ".ruff_cache",
              "reports", "backups", "collections")


def outside_env(tmp_path: Path, collections: Path) -> dict[str, str]:
    """Ansible as a user of the installed collection has it: an empty ansible.cfg, only the
    installed collections path (the ansible package's collections are found in site-packages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    empty_cfg = tmp_path / "empty.cfg"
    empty_cfg.write_text("")
    env.update(ANSIBLE_CONFIG=str(empty_cfg), ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S,
                          check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The collection built from the checkout and installed into an empty collections path."""
    base = tmp_path_factory.mktemp("collection")
    collections = base / "collections"
    env = outside_env(base, collections)
    built = run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(base / "dist"),
                 str(REPO_ROOT)], base, env)
    assert built.returncode == 0, playbook_output(built)
    [archive] = (base / "dist").glob("agency-pgmigrate-*.tar.gz")
    done = run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p", str(collections),
                str(archive)], base, env)
    assert done.returncode == 0, playbook_output(done)
    return {"base": base, "archive": archive, "collections": collections,
            "root": collections / "ansible_collections" / "agency" / "pgmigrate"}


def test_the_archive_holds_the_collection_and_nothing_else(installed: dict[str, Path]) -> None:
    archive = installed["archive"]
    assert archive.stat().st_size < MAX_ARCHIVE_BYTES, f"{archive.stat().st_size} bytes"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for wanted in ("MANIFEST.json", "meta/runtime.yml", "playbooks/migrate.yml",
                   "playbooks/common/require_databases.yml", "playbooks/plan.yml", "migrations/ht036/manifest.yml",
                   "roles/migration/tasks/run_phase.yml", "files/sql/ledger/ledger.sql",
                   "plugins/modules/pgmigrate_sql.py", "plugins/module_utils/pgmigrate.py",
                   "plugins/action/pgmigrate_direct.py", "plugins/action/pgmigrate_sql.py"):
        assert wanted in names, wanted
    assert any(n.startswith("migrations/ht036/phase3/") for n in names)
    for name in names:
        top = name.split("/", 1)[0]
        assert top not in NOT_PACKED and "__pycache__" not in name and not name.endswith(".pyc"), name
    manifest = json.loads((installed["root"] / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "agency"
    assert manifest["collection_info"]["name"] == "pgmigrate"


def test_the_installed_collection_migrates_from_outside_the_checkout(
        installed: dict[str, Path], fresh_db: dict[str, Any], tmp_path: Path) -> None:
    workdir = tmp_path / "operator"
    workdir.mkdir()
    inventory = write_inventory(workdir, fresh_db)
    env = outside_env(tmp_path, installed["collections"])
    playbook = str(BIN / "ansible-playbook")

    result = run([playbook, "agency.pgmigrate.migrate", "-i", str(inventory), "-e", "phase=all"], workdir, env)
    out = playbook_output(result)
    assert result.returncode == 0, out
    assert applied(fresh_db) == ["1", "2", "3", "4", "5", "6"]
    # The SQL came from the installed collection, never from the checkout.
    assert str(REPO_ROOT) not in result.stdout
    # In process, as from the checkout: no fallback to module processes.
    assert "run as module processes" not in out
    # The run's files are the operator's, in the directory the run started in, not in the collection.
    assert list((workdir / "reports").glob("*-local-migrate-testdb.json")), sorted(p.name for p in workdir.rglob("*"))
    assert not (installed["root"] / "reports").exists() and not (installed["root"] / "backups").exists()

    status = run([playbook, "agency.pgmigrate.status", "-i", str(inventory)], workdir, env)
    assert status.returncode == 0, playbook_output(status)
    # The other playbooks resolve (every role, module and action plugin found).
    for name in ("rollback", "complete", "rehearse", "watch", "approve", "brief", "review", "cleanup"):
        checked = run([playbook, f"agency.pgmigrate.{name}", "-i", str(inventory), "--syntax-check"], workdir, env)
        assert checked.returncode == 0, f"agency.pgmigrate.{name}\n{playbook_output(checked)}"


def doc_block(heading: str) -> str:
    """The first ```sh block after `heading` in docs/collection.md, exactly as a reader copies it."""
    text = (REPO_ROOT / "docs" / "collection.md").read_text()
    after = text[text.index(f"## {heading}\n"):]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start:after.index("```", start)]


def test_the_documented_commands_install_and_run_as_written(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """docs/collection.md's build and install lines typed in the checkout (a copy of it: the build
    writes dist/ there), then its "run from outside" lines typed in a shell of its own, with a
    HOME of the test's, no ANSIBLE_* variable: the checkout's ansible.cfg is read as a reader's
    shell would read it, and its collections/ link must not hide the install ("Nothing to do")."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT, checkout, symlinks=True,
                    ignore=shutil.ignore_patterns(*NOT_PACKED[:-1], "dist", "__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    # The async sampler's job files: ansible-core finds them under the passwd entry's home, not $HOME.
    env.update(HOME=str(home), ANSIBLE_NOCOLOR="1", ANSIBLE_ASYNC_DIR=str(home / ".ansible_async"),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")

    install = run(["bash", "-ec", doc_block("Build and install")], checkout, env)
    out = playbook_output(install)
    assert install.returncode == 0, out
    assert "Nothing to do" not in out
    assert (home / "collections" / "ansible_collections" / "agency" / "pgmigrate" / "MANIFEST.json").is_file(), out
    # Typed twice (a rebuilt archive, the same version): replaced, not "already installed".
    again = run(["bash", "-ec", doc_block("Build and install")], checkout, env)
    assert again.returncode == 0 and "Nothing to do" not in playbook_output(again), playbook_output(again)

    (home / "migrations").mkdir()
    write_inventory(home / "migrations", fresh_db)
    outside = run(["bash", "-ec", doc_block("Run from outside the checkout")], home, env)
    out = playbook_output(outside)
    assert outside.returncode == 0, out
    assert "could not be found" not in out
    assert str(checkout) not in outside.stdout  # the installed collection ran, not the checkout
    assert applied(fresh_db) == []  # migrated, then rolled back, as the block says
    assert list((home / "migrations" / "reports").glob("*-local-migrate-testdb.json"))
