"""Every module's DOCUMENTATION is YAML that ansible-doc and ansible-lint can read (ansible-lint
only prints an error for an unreadable one, and passes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT

MODULES = sorted((REPO_ROOT / "plugins" / "modules").glob("pgmigrate_*.py"))


def documentation(path: Path) -> dict:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DOCUMENTATION" for t in node.targets):
            return yaml.safe_load(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} has no DOCUMENTATION")


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_documentation_is_readable(path: Path) -> None:
    doc = documentation(path)
    assert doc["module"] == path.stem
    assert doc["short_description"]
    assert isinstance(doc.get("options", {}), dict)
