"""The documentation: the reference pages are generated from their one source (argument specs,
modules' DOCUMENTATION), so a spec changed without its page regenerated fails here; every
relative link of README.md and docs/ reaches a file (and its heading); the README stays short."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def _spec_options(role: Path) -> dict[str, list[dict]]:
    """Every option the role's meta/argument_specs.yml types, with its spec in each entry point."""
    spec_file = role / "meta" / "argument_specs.yml"
    options: dict[str, list[dict]] = {}
    if spec_file.is_file():
        for spec in (yaml.safe_load(spec_file.read_text())["argument_specs"] or {}).values():
            for name, option in ((spec or {}).get("options") or {}).items():
                options.setdefault(name, []).append(option or {})
    return options


def _role_defaults() -> dict[Path, dict]:
    return {path.parent.parent: yaml.safe_load(path.read_text()) or {}
            for path in sorted(REPO_ROOT.glob("roles/*/defaults/main.yml"))}


def test_every_role_default_has_an_argument_spec() -> None:
    """A variable a role's defaults/main.yml sets is typed in that role's meta/argument_specs.yml,
    so docs/variables.md, generated from the specs, lists every variable."""
    missing = [f"{name} ({role.relative_to(REPO_ROOT)})"
               for role, defaults in _role_defaults().items()
               for name in defaults if name not in _spec_options(role)]
    assert not missing, ("role defaults without an argument spec (type them in the role's "
                         "meta/argument_specs.yml, then run tools/gen_docs.py):\n" + "\n".join(missing))


def test_argument_spec_defaults_are_the_roles_defaults() -> None:
    """Where a spec states a default, it is the value defaults/main.yml sets (a templated one
    aside), so the reference never documents a default the role does not use."""
    values = {name: value for defaults in _role_defaults().values() for name, value in defaults.items()
              if not (isinstance(value, str) and "{{" in value)}
    wrong = [f"{name} ({role.relative_to(REPO_ROOT)}): spec {option['default']!r}, defaults {values[name]!r}"
             for role in sorted((REPO_ROOT / "roles").iterdir())
             for name, options in _spec_options(role).items() if name in values
             for option in options if "default" in option and option["default"] != values[name]]
    assert not wrong, "\n".join(wrong)


# A relative link: [text](target) outside code; http(s) and mail links are not ours to check.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
README_MAX_LINES = 200


def pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives a page: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in pages():
        text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            name = f"{page.relative_to(REPO_ROOT)}: {target}"
            if not dest.exists():
                broken.append(f"{name} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{name} (no such heading in {dest.relative_to(REPO_ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_links_are_checked() -> None:
    """The link check reads what it should: the README's links into docs/ and a heading anchor."""
    text = CODE_SPAN.sub("", FENCE.sub("", (REPO_ROOT / "README.md").read_text()))
    targets = LINK.findall(text)
    assert "docs/operations.md" in targets and any("#" in t for t in targets), targets
    assert "lock-safety" in anchors(REPO_ROOT / "docs" / "design.md")


def test_every_code_fence_is_closed() -> None:
    """An unclosed ``` turns the rest of a page into code (design.md's tunables once were)."""
    unclosed = [str(page.relative_to(REPO_ROOT)) for page in pages()
                if sum(1 for line in page.read_text().splitlines() if re.match(r"\s*(```|~~~)", line)) % 2]
    assert not unclosed, f"a code fence is left open in: {', '.join(unclosed)}"


def test_readme_stays_short() -> None:
    lines = (REPO_ROOT / "README.md").read_text().count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines: keep it under {README_MAX_LINES}, put the rest in docs/")
