"""The reference pages are generated from their one source (argument specs, modules'
DOCUMENTATION): a spec changed without its page regenerated fails here."""

from __future__ import annotations

import subprocess
import sys

import yaml
from helpers import REPO_ROOT


def test_generated_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_role_variable_is_on_the_page() -> None:
    page = (REPO_ROOT / "docs" / "variables.md").read_text()
    for spec_file in REPO_ROOT.glob("roles/*/meta/argument_specs.yml"):
        for spec in (yaml.safe_load(spec_file.read_text())["argument_specs"] or {}).values():
            for name in (spec or {}).get("options") or {}:
                assert f"| `{name}` |" in page, f"{name} ({spec_file}) missing from docs/variables.md"
