"""The execution environment (execution-environment.yml, ansible-builder v3): `ansible-builder
create` writes its build context without a container engine. The context holds the Containerfile,
the collection's archive where ee/requirements.yml installs it from, the Python requirements and
the PostgreSQL client packages, pinned like the project's own virtualenv."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml
from helpers import REPO_ROOT

BIN = Path(sys.executable).parent


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_ansible_builder_create_writes_a_complete_context(tmp_path: Path) -> None:
    galaxy = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
    archive_name = f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    # The definition and its files, beside an archive built from this checkout (as the docs say:
    # ansible-galaxy collection build --output-path dist/), outside the checkout.
    shutil.copy(REPO_ROOT / "execution-environment.yml", tmp_path)
    shutil.copytree(REPO_ROOT / "ee", tmp_path / "ee")
    build = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                            str(tmp_path / "dist"), str(REPO_ROOT)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    definition = yaml.safe_load((tmp_path / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    sources = [f["src"] for f in definition["additional_build_files"]]
    assert f"dist/{archive_name}" in sources, \
        f"execution-environment.yml copies {sources}, not this version's {archive_name} (galaxy.yml)"

    create = subprocess.run([str(BIN / "ansible-builder"), "create", "-f", str(tmp_path / "execution-environment.yml"),
                             "-c", str(tmp_path / "context"), "--output-filename", "Containerfile"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert create.returncode == 0, create.stdout + create.stderr
    context = tmp_path / "context"
    containerfile = (context / "Containerfile").read_text()
    assert f'ARG EE_BASE_IMAGE="{definition["images"]["base_image"]["name"]}"' in containerfile
    # The `ansible` package of the project's virtualenv (ansible-core 2.19, community.postgresql).
    ansible_pin = pins(REPO_ROOT / "requirements.txt")["ansible"]
    assert re.search(rf'ARG ANSIBLE_INSTALL_REFS="ansible=={re.escape(ansible_pin)} ansible-runner==', containerfile)
    assert "ansible-galaxy collection install" in containerfile and "-r requirements.yml" in containerfile

    build_dir = context / "_build"
    # Python: the driver the modules use, pinned as in the virtualenv.
    ee_pins = pins(build_dir / "requirements.txt")
    assert ee_pins["psycopg2-binary"] == pins(REPO_ROOT / "requirements.txt")["psycopg2-binary"]
    # System: the PostgreSQL client programs (pg_dump, pg_restore) for dnf and apt bases alike.
    bindep = (build_dir / "bindep.txt").read_text()
    assert re.search(r"^postgresql \[platform:rpm\]", bindep, re.M)
    assert re.search(r"^postgresql-client \[platform:dpkg\]", bindep, re.M)
    # The collection: requirements.yml names the archive where the context puts it (_build is /build).
    wanted = yaml.safe_load((build_dir / "requirements.yml").read_text())["collections"]
    assert wanted == [{"name": f"/build/collections/{archive_name}", "type": "file"}]
    archive = build_dir / "collections" / archive_name
    assert archive.is_file(), f"{archive} missing from the build context"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for member in ("plugins/modules/pgmigrate_info.py", "plugins/doc_fragments/connection.py",
                   "playbooks/migrate.yml", "meta/runtime.yml", "meta/execution-environment.yml",
                   "ee/requirements.txt", "ee/bindep.txt"):
        assert member in names, f"{member} missing from {archive_name}"
    # ansible-builder's introspection of the installed collection reads meta/execution-environment.yml,
    # never the repository's development requirements.txt (molecule, pytest...).
    meta = yaml.safe_load((REPO_ROOT / "meta" / "execution-environment.yml").read_text())
    assert meta["dependencies"] == {"python": "ee/requirements.txt", "system": "ee/bindep.txt"}
