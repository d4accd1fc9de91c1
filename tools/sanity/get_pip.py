"""Stand-in for ansible-test's pip bootstrap script (get-pip), for machines that reach PyPI but
not the host ansible-test downloads get-pip from: the interpreter's own pip wheel (ensurepip)
bootstraps pip, which then installs what ansible-test asked for (pip==<its version>) from the
machine's package index. tools/sanity.sh copies it to ~/.ansible/test/cache/get_pip_<version>.py
when that file is missing; ansible-test runs it as it runs get-pip, with pip install's arguments
and get-pip's own --no-setuptools / --no-wheel."""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

# get-pip's own options (not pip install's): leave setuptools and wheel out of the environment.
OWN = {"--no-setuptools": "setuptools", "--no-wheel": "wheel"}


def main() -> int:
    args = [a for a in sys.argv[1:] if a not in OWN]
    unwanted = [OWN[a] for a in sys.argv[1:] if a in OWN]
    saved = dict(os.environ)
    ensurepip.bootstrap(upgrade=True)
    # ensurepip points PIP_CONFIG_FILE at /dev/null; the install below keeps the machine's pip
    # configuration (its index, its CA bundle).
    os.environ.clear()
    os.environ.update(saved)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    status = subprocess.call([*pip, "install", *args])
    if status == 0 and unwanted:
        status = subprocess.call([*pip, "uninstall", "--yes", "--quiet", *unwanted])
    return status


if __name__ == "__main__":
    sys.exit(main())
