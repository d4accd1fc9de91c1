"""The one Markdown renderer (module_utils/pgmigrate_markdown.py) and every report that uses it:
a pipe, a backslash and a line break in a table cell show as they are (one cell, one line), the
same way in the run report, the briefing, the review and its schema document, the rehearsal and
the watch; and no report builds a table row by hand any more.

The Markdown is read back by markdown-it-py (installed with molecule's rich) with GitHub's table
rule, as GitHub and the usual viewers read it."""

from __future__ import annotations

import datetime
import html
import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT, plugin
from markdown_it import MarkdownIt

md = plugin("module_utils", "pgmigrate_markdown")

# A pipe, a backslash (before a pipe too) and a line break: what a cell must keep.
ODD = "a|b\\c\\|d\ne"
# How it shows: one line, the break a space.
SHOWN = "a|b\\c\\|d e"


def cells(markdown: str) -> list[list[str]]:
    """Every table row of the document, as the text of its cells (HTML entities undone)."""
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)]
            for r in rows]


def shown_in_a_cell(markdown: str) -> bool:
    return any(SHOWN in row for row in cells(markdown))


# --- the renderer ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [ODD, "|", "\\", "\\|", "x\\\\|y", "ends with \\", "C:\\dir\\", "x\r\ny\rz"])
def test_a_cell_shows_its_value(value: str) -> None:
    lines = md.table(["value", "next"], [(value, "after")])
    [_header, [shown, after]] = cells("\n".join(lines))
    assert (shown, after) == (re.sub(r"\r\n|\r|\n", " ", value), "after")


def test_a_code_span_keeps_backslashes_and_pipes() -> None:
    lines = md.table(["code"], [(md.code("a|b\\c"),), (md.code("x`y"),)])
    rendered = MarkdownIt("commonmark").enable("table").render("\n".join(lines))
    assert "<code>a|b\\c</code>" in rendered and "<code>x`y</code>" in rendered


def test_tables_and_none() -> None:
    assert md.table(["a", "b"], [(None, 1)], "lr") == ["| a | b |", "|---|---:|", "|  | 1 |"]
    assert md.row([md.Markdown("**x|y**")]) == "| **x|y** |"


# --- every report ------------------------------------------------------------------------------


def test_the_run_report() -> None:
    report = plugin("modules", "pgmigrate_report")
    r = {"playbook": "migrate", "result": "failed", "result_phase": "3", "next": "fix", "reason": "",
         "context": {"host": "h", "environment": "local", "operator": ODD, "phases_selected": ["3"]},
         "finished_at": "t", "approved_by": "", "phase_titles": {"3": "DATA"},
         "phases": [{"phase": "3", "direction": "apply", "status": "failed", "started_at": "t", "duration_s": 1.0,
                     "rows_affected": None, "error": ODD, "details": {}}],
         "validation": None, "alerts": [], "monitoring": {"pg_stat_statements": "", "samples": []},
         "approvals": [{"stage": "pre", "role": "r", "name": ODD, "decision": "go", "recorded_at": "t"}],
         "notifications": [{"at": "t", "event": "failed", "text": ODD, "channels": {}}], "extra": {}}
    text = report.markdown(r)
    rows = cells(text)
    assert ["operator", SHOWN] in rows
    assert ["3", "DATA", "apply", "failed", "t", "1.0", "n/a", SHOWN] in rows
    assert ["pre", "r", SHOWN, "go", "t"] in rows
    assert ["t", "failed", SHOWN, ""] in rows


def test_the_briefing() -> None:
    brief = plugin("modules", "pgmigrate_brief")
    b = {"host": "h", "environment": "staging", "at": "t", "window": None, "total_seconds": 1.0, "applied": [],
         "database": {"server_version": "16", "in_recovery": False, "database_size_bytes": 0,
                      "tables": [{"table": ODD, "rows_estimate": 1, "total_bytes": 0}]},
         "rehearsal": None,
         "phases": [{"phase": "1", "title": ODD, "applied": False, "seconds": 1.0, "source": "estimate", "rows": None}],
         "checkpoints": {}, "rollback": [], "signoffs": [{"role": "dba", "required": True, "state": "go", "name": ODD,
                                                         "recorded_at": None}],
         "signoffs_missing": [], "delete_rules": {"fk_cao_installation": "", "overrides_linkable_to_installation": 0,
                                                  "overrides": 0},
         "drain": {"says": "x"}, "channels": {}}
    rows = cells(brief.markdown(b, {}))
    assert [SHOWN, "1", "0.0 MiB"] in rows
    assert ["1", SHOWN, "1.0 s", "estimate", ""] in rows
    assert ["dba (required)", "go", SHOWN, ""] in rows


def test_the_review_and_its_schema_document() -> None:
    review = plugin("modules", "pgmigrate_review")
    schema = {"tables": [{"table": "t", "comment": "", "rls": False, "constraints": [], "indexes": [], "policies": [],
                          "columns": [{"column": "c|1", "type": "text", "not_null": True, "default": ODD,
                                       "comment": ODD}]}], "views": []}
    rows = cells(review.schema_markdown(schema))
    assert ["c|1", "text", "no", SHOWN, SHOWN] in rows
    r = {"host": "h", "environment": "e", "at": "t", "completed_at": "t", "days_since": None,
         "timeline": [{"id": 1, "run_id": "12345678", "phase": "6", "attempt": 1, "direction": "apply",
                       "status": "succeeded", "started_at": "t", "duration_s": 1.0, "rows": None,
                       "lock": {"lock_retries": 0, "sessions_waiting_max": 0}, "operator": ODD}],
         "titles": {"6": "VALIDATION"}, "runs": [], "challenges": [],
         "performance": {"before": {}, "after_phase6": {}, "watch": {}, "watch_samples": 0, "watch_over": False},
         "approvals": [{"role": "Owner", "stage": "post", "decision": "go", "name": ODD, "recorded_at": "t"}],
         "post_roles": ["Owner"], "schema": schema}
    rows = cells(review.markdown(r))
    assert ["1", "12345678", "6 VALIDATION", "apply", "succeeded", "t", "1.0 s", "", "0", "0", SHOWN] in rows
    assert ["Owner", "go", SHOWN, "t"] in rows


def test_the_rehearsal() -> None:
    rehearsal = plugin("modules", "pgmigrate_rehearsal")
    r = {"context": {"host": "s", "operator": ODD}, "verdict": "no-go", "reason": "x", "finished_at": "t",
         "run_report": "", "clone": {}, "ledger_note": "",
         "phases": [{"phase": "3", "title": "DATA", "status": "failed", "duration_s": 1.0, "rows": None,
                     "lock_waits": {"lock_retries": 0, "sessions_waiting_max": 0, "longest_wait_s": 0.0},
                     "error": ODD}],
         "validation": {"passed": False, "report": "v", "checks": [{"check": "c", "passed": False, "observed": ODD,
                                                                    "expected": "1"}]},
         "alerts": [], "rollback": {}, "rollback_phases": [], "fidelity": {}, "reasons": ["x"]}
    rows = cells(rehearsal.markdown(r))
    assert ["operator", SHOWN] in rows
    assert ["3", "DATA", "failed", "1.0", "", "0", "0", "0.0", SHOWN] in rows
    assert ["c", "NO", SHOWN, "1"] in rows


def test_the_watch(tmp_path: Path) -> None:
    watch = plugin("modules", "pgmigrate_watch")
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    sample = {"kind": "sample", "taken_at": start.isoformat(), "metrics": {},
              "alerts": [{"at": "t", "metric": "m", "severity": "warning", "message": ODD}], "escalations": [],
              "details": {"tables": [{"table": ODD, "total_bytes": 0, "live_tuples": 1, "dead_tuples": 2}]}}
    p = {"report_dir": str(tmp_path), "host": "h", "hours": 48.0, "thresholds": {}, "queue_age_alert_s": 600,
         "plots": False, "_plan": watch.watch_plan(None, None)}
    watch.trend_report(p, start, [sample], False)
    rows = cells((tmp_path / "watch-h.md").read_text())
    assert ["t", "m", "warning", "1", "no", SHOWN] in rows
    assert [SHOWN, "0.00 MiB", "1", "2"] in rows


def test_no_report_builds_a_table_row_by_hand() -> None:
    """A table row written as an f-string escapes nothing unless its author remembered to."""
    by_hand = re.compile(r"""f["']\| \{""")
    found = [f"{path.name}:{n}" for path in sorted((REPO_ROOT / "plugins").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if by_hand.search(line)]
    assert found == []
