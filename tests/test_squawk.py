"""Every SQL file in files/sql and migrations/ passes squawk (PyPI squawk-cli), configured by .squawk.toml.

Each file is linted the way the runner (plugins/modules/pgmigrate_sql.py) executes it: psql
variables replaced by placeholder literals (the runner fills them; squawk's parser knows no
psql), and, unless its header says `-- pgmigrate: no-transaction`, as one transaction
(--assume-in-transaction). The rules that do not apply are switched off in .squawk.toml, each
with its reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, plugin

file_directives = plugin("module_utils", "pgmigrate").file_directives
# The SQL with every psql variable replaced by a literal of the same syntactic kind: the same
# function lints each step's file for playbooks/plan.yml.
placeholders = plugin("module_utils", "pgmigrate_plan").squawk_placeholders

# The engine's SQL and every migration directory's.
SQL_ROOTS = (REPO_ROOT / "files" / "sql", REPO_ROOT / "migrations")
CONFIG = REPO_ROOT / ".squawk.toml"
SQL_FILES = sorted(p for root in SQL_ROOTS for p in root.rglob("*.sql"))


def squawk() -> str:
    found = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if found is None:
        pytest.fail("squawk is not installed: pip install -r requirements.txt (squawk-cli)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    raw = path.read_text(encoding="utf-8")
    cmd = [squawk(), "--config", str(CONFIG), "--reporter", "gcc",
           "--stdin-filepath", str(path.relative_to(REPO_ROOT))]
    if "no-transaction" not in file_directives(raw):
        cmd.append("--assume-in-transaction")
    return subprocess.run(cmd, input=placeholders(raw), capture_output=True, text=True, check=False)


def test_there_are_sql_files_and_a_config() -> None:
    assert len(SQL_FILES) > 10, SQL_FILES
    text = CONFIG.read_text()
    # Every switched-off rule is preceded by a comment that says why.
    for rule in re.findall(r'^\s*"([a-z-]+)",', text, flags=re.MULTILINE):
        before = text[: text.index(f'"{rule}"')].rstrip().splitlines()
        assert before and (before[-1].lstrip().startswith("#") or before[-1].strip().endswith('",')), rule


@pytest.mark.parametrize("path", SQL_FILES, ids=[str(p.relative_to(REPO_ROOT)) for p in SQL_FILES])
def test_squawk_passes(path: Path) -> None:
    result = lint(path)
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"squawk flags {path.relative_to(REPO_ROOT)}:\n{result.stdout}{result.stderr}"
        "\nFix the SQL, or switch the rule off in .squawk.toml with the reason it does not apply."
    )


def test_squawk_catches_unsafe_ddl() -> None:
    """The configuration still flags what matters: a blocking index build on a live table."""
    cmd = [squawk(), "--config", str(CONFIG), "--reporter", "gcc", "--stdin-filepath", "probe.sql"]
    result = subprocess.run(cmd, input="CREATE INDEX idx_probe ON client_app_overrides (app_name);\n",
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "require-concurrent-index-creation" in result.stdout
