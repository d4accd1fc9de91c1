# The one Markdown renderer of the reports (run report, briefing, review and schema document,
# rehearsal, watch): table cells escaped one way everywhere, tables built one way.
#
# A table row (GitHub-flavoured Markdown) is split into cells on every pipe no backslash
# escapes, before anything else is parsed, and is one line. So a value's backslashes are doubled
# first (one of the value's must not escape the character after it: `x\|y` would lose its
# backslash), then its pipes escaped, and its line breaks become spaces: `a|b`, `C:\dir` and two
# lines each show as they are, in every report. The escaping was two ways before (pipes and line
# breaks in some cells, pipes only or nothing in others) and never doubled a backslash. Text
# that is Markdown on purpose (a code span, bold, an image) is wrapped in Markdown() and goes in
# as it is; other Markdown (`*`, `_`, backticks) is left as it was, so reports read as before.
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


class Markdown(str):
    """Text that is Markdown already: table() and cell() put it in as it is."""


def cell(value: Any) -> str:
    """A value as one line of Markdown text (a table cell, a list item): None is empty, a
    backslash doubled, a pipe escaped, a line break a space."""
    if value is None:
        return ""
    if isinstance(value, Markdown):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return _LINE_BREAKS.sub(" ", text)


def code(value: Any) -> Markdown:
    """A value as an inline code span that also holds in a table cell: backslashes stay literal
    (a code span has no escapes), a pipe is escaped (the table splits cells first and drops the
    backslash), the fence is longer than any run of backticks inside."""
    text = _LINE_BREAKS.sub(" ", "" if value is None else str(value)).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markdown(f"{fence}{pad}{text}{pad}{fence}")


def row(cells: Iterable[Any]) -> str:
    """One table row: each cell escaped (Markdown() ones as they are)."""
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], align: str = "") -> list[str]:
    """A table's lines: the header, its rule, then one line per row. align: one letter per
    column, l (the default) or r (numbers)."""
    names = list(header)
    rule = "|" + "|".join("---:" if align[i:i + 1] == "r" else "---" for i in range(len(names))) + "|"
    return [row(names), rule, *(row(r) for r in rows)]
