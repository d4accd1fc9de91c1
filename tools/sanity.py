#!/usr/bin/env python3
"""ansible-test sanity on the collection as it is shipped, as community.postgresql's CI runs it.

ansible-test wants the collection at .../ansible_collections/agency/pgmigrate (the checkout's own
link resolves to the checkout, which is not such a path), so this builds the archive
(ansible-galaxy collection build, galaxy.yml's build_ignore), installs it into a temporary
collections path and runs `ansible-test sanity --local` there, without a container engine.

    tools/sanity.py                 every default test on the shipped plugins, roles, playbooks, meta
    tools/sanity.py --test NAME     one test (repeatable), e.g. --test validate-modules

ansible-test runs each test in a virtualenv of its own (~/.ansible/test/venv), with the pinned
requirements it installs from the package index. Its pip bootstrap script comes from a host this
machine does not reach; tools/sanity/get_pip.py stands in for it (the interpreter's ensurepip,
then pip from the index). Known exceptions, each with its reason: tests/sanity/ignore-2.19.txt.
Exit status: ansible-test's; its output names every failing file, line and rule.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# What the collection ships and ansible-test checks. tests/, tools/ and molecule/ are the
# repository's own test and bench code (ruff checks them); ansible-test's pylint and pep8 rules
# are for plugins.
TARGETS = ["plugins/", "roles/", "playbooks/", "meta/"]
# shellcheck is not installed (ansible-test skips it with a warning); pslint needs pwsh and
# there is no PowerShell here.
SKIP = ["pslint", "shellcheck"]


def pip_bootstrap_version() -> str:
    """The pip version ansible-test bootstraps its virtualenvs with (get_venv_packages)."""
    import ansible_test._internal.python_requirements as reqs  # noqa: PLC0415 - only for its path

    found = re.search(r"default_packages = dict\(\s*pip='([^']+)'", Path(reqs.__file__).read_text())
    if not found:
        raise SystemExit("sanity: cannot tell which pip ansible-test bootstraps (ansible-core changed?)")
    return found.group(1)


def ensure_pip_bootstrap() -> None:
    version = pip_bootstrap_version()
    cache = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{version.replace('.', '_')}.py"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "tools" / "sanity" / "get_pip.py", cache)
        print(f"sanity: pip bootstrap for ansible-test: {cache} (tools/sanity/get_pip.py)")


def run(argv: list[str], **kwargs) -> None:
    result = subprocess.run(argv, check=False, **kwargs)
    if result.returncode:
        raise SystemExit(f"sanity: {' '.join(argv[:3])} failed (exit {result.returncode})")


def install_collection(work: Path) -> Path:
    """The archive built from the checkout, installed into work/root; its installed path."""
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(work / "root")}
    run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(work / "dist"), str(ROOT)],
        env=env, stdout=subprocess.DEVNULL)
    archive = work / "dist" / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--force", "-p", str(work / "root"),
         str(archive)], env=env, stdout=subprocess.DEVNULL)
    return work / "root" / "ansible_collections" / galaxy["namespace"] / galaxy["name"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="append", default=[], help="run only this sanity test (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the installed copy, print where it is")
    args = parser.parse_args()
    ensure_pip_bootstrap()
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-sanity-"))
    try:
        collection = install_collection(work)
        argv = [str(BIN / "ansible-test"), "sanity", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
                "--local", "--color", "no"]
        argv += [f"--test={t}" for t in args.test] or [f"--skip-test={t}" for t in SKIP]
        argv += TARGETS
        print(f"sanity: {' '.join(argv[1:])} in {collection}", flush=True)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("ANSIBLE_CONFIG", None)  # the checkout's ansible.cfg points at the checkout
        return subprocess.run(argv, cwd=collection, env=env, check=False).returncode
    finally:
        if args.keep:
            print(f"sanity: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
