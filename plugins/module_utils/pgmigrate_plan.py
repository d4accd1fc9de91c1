# The migration's plan, one home for it (docs/writing-a-migration.md#the-review-plan):
#   * the plan an approver signs: a canonical text of what the run executes and its sha256, the
#     plan's checksum (pgmigrate_signoff action=plan, verify, record; the preflight refuses a
#     run whose plan is not the signed one, naming what changed: plan_changes);
#   * the review printed beside it (pgmigrate_signoff action=review, playbooks/plan.yml and
#     migrate.yml --check): per step the rows of the tables it locks (the planner's estimates),
#     its expected duration (measured by the latest rehearsal or run, else the size model below,
#     marked as an estimate) and squawk's findings for its file. None of these is in the
#     checksum: they change from run to run and machine to machine.
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    _VARIABLE,
    LEDGER_SCHEMA,
    fetch_dicts,
    file_checksums,
    file_directives,
    json_safe,
)

# The plan's first line: a signature of one format never verifies against another. Format 2
# added the manifest (the migration's id and its data, each step's kind, locks, revert and verify)
# and the reverts' and verifies' files.
PLAN_HEADER = "pgmigrate plan 2"

# The size model, where no rehearsal or run measured a step: seconds = fixed + per_million x
# the rows of the tables the step locks (pg_class.reltuples, in millions), by the step's kind.
# Calibrated on the sandbox's measured phases (docs/benchmarks.md, about 1.1 M overrides; the
# briefing's per-phase model, pgmigrate_brief's ESTIMATE, from the same runs): a transactional
# step is catalog work and short scans; an index build or a validation reads its table once; a
# batched step writes every row it touches, yielding to the throttle between batches. An
# estimate tells the order of magnitude; a rehearsal on a clone gives the figure.
SIZE_MODEL: dict[str, tuple[float, float]] = {
    "transaction": (0.1, 0.5),
    "no-transaction": (0.2, 2.0),
    "batches": (0.5, 20.0),
    "backfill-plan": (0.5, 2.0),
    "backfill-batch": (0.5, 20.0),
    "transition-open": (0.1, 0.0),
    "verify": (0.2, 1.0),
}
SQUAWK_TIMEOUT_S = 60
# squawk --reporter gcc: path:line:column: level: rule message (squawk 2.x counts lines from 0)
_GCC_LINE = re.compile(r"^(?P<path>.*?):(?P<line>\d+):(?P<column>\d+): "
                       r"(?P<level>\w+): (?P<rule>[\w-]+) (?P<message>.*)$")


# --- the plan an approver signs, and its checksum -----------------------------------------------

def plan_field(value: Any) -> str:
    """A value as one token: quoted (JSON) when it holds a space, a quote or a line break, so no
    two plans print alike."""
    text = str(value)
    return text if re.fullmatch(r'[^\s"]+', text) else json.dumps(text)


def canonical(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same data gives the same bytes everywhere."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def step_partner_files(step: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A manifest step's revert files and verify files (relative to the SQL root)."""
    revert = step.get("revert") or {}
    reverts = [str(r["file"]) for r in (revert.get("files") or []) if isinstance(r, dict) and r.get("file")]
    verify = step.get("verify") or {}
    return reverts, ([str(verify["file"])] if isinstance(verify, dict) and verify.get("file") else [])


def plan_text(p: dict[str, Any]) -> str:
    """The run's plan: one line per fact, in a fixed order, so the same run always gives the same
    bytes on any machine. What it covers: the migration (its manifest's id and, as one sha256,
    everything the manifest says besides its phases), the target database by where it is (never
    its credentials), the phases of the run, their parameters, every file the ledger checksums
    with its sha256, each step as the manifest has it (file, kind, locks, revert, verify, in the
    manifest's order), and the reverts' and verifies' files with their sha256. Files are named as
    in the checkout (sql_label, the SQL root relative to the project: files/sql)."""
    ordered = sorted(p["phases"], key=lambda item: str(item["phase"]))
    label = (p.get("sql_label") or "files/sql").rstrip("/")
    root = p["sql_root"]
    lines = [PLAN_HEADER]
    manifest = p.get("manifest") or {}
    if manifest:
        rest = {key: value for key, value in manifest.items() if key != "phases"}
        lines.append(f"migration {plan_field(manifest.get('id', ''))} manifest={sha256_of(canonical(rest))}")
    lines += [f"database host={plan_field(p['db_host'])} port={p['db_port']} dbname={plan_field(p['db_name'])}",
              "phases " + " ".join(str(item["phase"]) for item in ordered)]
    for item in ordered:
        for key, value in sorted((item.get("checksum_params") or {}).items()):
            lines.append(f"param {item['phase']} {key}={plan_field(value)}")
    for item in ordered:
        for path, digest in sorted(file_checksums(item.get("files") or [], root).items()):
            lines.append(f"file {plan_field(label + '/' + path)} sha256={digest}")
    partners: dict[str, set[str]] = {"revert-file": set(), "verify-file": set()}
    for item in ordered:
        if item.get("title") is not None:
            head = {key: item.get(key) for key in ("title", "role", "requires")}
            lines.append(f"phase {item['phase']} {canonical(head)}")
        for step in item.get("steps") or []:
            lines.append(f"step {item['phase']} {plan_field(label + '/' + str(step['file']))} {canonical(step)}")
            reverts, verifies = step_partner_files(step)
            partners["revert-file"].update(reverts)
            partners["verify-file"].update(verifies)
    for word, names in partners.items():
        for path in sorted(names):
            digest = file_checksums([os.path.join(root, path)], root)[path]
            lines.append(f"{word} {plan_field(label + '/' + path)} sha256={digest}")
    return "\n".join(lines) + "\n"


def plan_entries(text: str) -> dict[str, str]:
    """A plan's lines by what they are about (a file's path, a step, a phase's parameter, the
    database, the manifest, the format)."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines()):
        word, rest = line.partition(" ")[::2]
        if number == 0:
            entries["format"] = line
        elif word in ("file", "revert-file", "verify-file"):
            path, digest = rest.rpartition(" ")[::2]
            entries[path] = digest.removeprefix("sha256=")[:12]
        elif word == "step":
            phase, step = rest.partition(" ")[::2]
            path, definition = step.partition(" ")[::2]
            entries[f"phase {phase}'s step {path}"] = sha256_of(definition)[:12]
        elif word == "phase":
            phase, definition = rest.partition(" ")[::2]
            entries[f"phase {phase}'s title, role or requires"] = sha256_of(definition)[:12]
        elif word == "param":
            phase, assignment = rest.partition(" ")[::2]
            name, value = assignment.partition("=")[::2]
            entries[f"phase {phase}'s {name}"] = value
        elif word == "migration":
            entries["the migration's manifest (besides its phases)"] = rest
        elif word in ("database", "phases"):
            entries[word] = rest
    return entries


def _is_file(key: str) -> bool:
    return "/" in key and not key.startswith(("phase ", "the "))


def plan_changes(signed: str, current: str) -> str:
    """What differs between the plan that was signed and this run's, in a sentence: the files
    first (what an approver reviewed), then the rest."""
    old, new = plan_entries(signed), plan_entries(current)
    if old.get("format") != new.get("format"):
        return (f"the plan's format ({old.get('format', '?')} -> {new.get('format', '?')}): the plan now "
                "covers more than what was signed; review it and sign it again")
    changes = []
    for key in sorted(set(old) | set(new), key=lambda k: (not _is_file(k), k)):
        what = "sha256 " if _is_file(key) else ("manifest entry " if "'s step " in key else "")
        if key not in new:
            changes.append(f"{key} (no longer in the plan)")
        elif key not in old:
            changes.append(f"{key} (new)")
        elif old[key] != new[key]:
            changes.append(f"{key} ({what}{old[key]} -> {new[key]})")
    return ", ".join(changes) or "the plan's format"


# --- the review: estimates, durations, squawk ---------------------------------------------------

def locked_tables(step: dict[str, Any]) -> list[str]:
    """The tables a step locks, each once, in the manifest's order."""
    seen: list[str] = []
    for lock in step.get("locks") or []:
        table = str(lock.get("table", "")) if isinstance(lock, dict) else ""
        if table and table not in seen:
            seen.append(table)
    return seen


def read_database(conn: Any, tables: list[str], phases: list[str]) -> dict[str, Any]:
    """In one read-only transaction: each table's planner estimate (pg_class.reltuples; None when
    never analyzed, absent when not there yet) in the session's schema, and the ledger's latest
    successful run of each phase (its duration and each file's seconds)."""
    out: dict[str, Any] = {"tables": {}, "ledger": {}}
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        for row in fetch_dicts(cur, """
                SELECT c.relname AS name, c.relkind AS kind, c.reltuples::float8 AS reltuples
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relname = ANY(%s)""", (tables,)):
            # -1 (PostgreSQL 14 and later): never vacuumed or analyzed, the planner does not know.
            known = row["kind"] in ("r", "p", "m") and row["reltuples"] >= 0
            out["tables"][row["name"]] = {"kind": row["kind"], "rows": int(row["reltuples"]) if known else None}
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
        if cur.fetchone()[0]:
            for row in fetch_dicts(cur, f"""
                    SELECT DISTINCT ON (phase) phase, finished_at,
                           extract(epoch FROM finished_at - started_at)::float8 AS seconds,
                           details -> 'steps' AS steps
                      FROM {LEDGER_SCHEMA}.history
                     WHERE direction = 'apply' AND status = 'succeeded' AND finished_at IS NOT NULL
                       AND phase = ANY(%s)
                     ORDER BY phase, id DESC""", (phases,)):
                out["ledger"][row["phase"]] = row
    conn.rollback()
    return json_safe(out)


def latest_rehearsal(directory: str, host: str) -> tuple[dict[str, Any] | None, str]:
    """The newest rehearsal report (<dir>/*-rehearsal.json) whose source is this host."""
    if not directory:
        return None, ""
    found = []
    for path in glob.glob(os.path.join(directory, "*-rehearsal.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            continue
        source = str((report.get("context") or {}).get("source", ""))
        if report.get("kind") == "rehearsal" and (source == host or source.startswith(host + " (")):
            found.append((str(report.get("context", {}).get("started_at", "")), path, report))
    if not found:
        return None, ""
    _started, path, report = max(found)
    return report, path


def step_seconds(steps: Any, file: str) -> float | None:
    """A file's measured seconds among a run's steps ([{file, seconds}], the file as it ran)."""
    for step in steps or []:
        if not isinstance(step, dict) or step.get("seconds") is None:
            continue
        if str(step.get("file", "")).endswith("/" + file):
            return float(step["seconds"])
    return None


def size_estimate(kind: str, rows: int | None) -> float:
    fixed, per_million = SIZE_MODEL.get(kind, (0.2, 1.0))
    return round(fixed + per_million * (rows or 0) / 1_000_000, 1)


def find_squawk(hint: str = "") -> str | None:
    """squawk (PyPI squawk-cli): the path given, else beside this Python (the venv), else PATH."""
    if hint:
        return hint if os.path.isfile(hint) and os.access(hint, os.X_OK) else None
    return shutil.which("squawk", path=os.path.dirname(sys.executable)) or shutil.which("squawk")


def squawk_placeholders(sql: str) -> str:
    """The SQL with every psql variable replaced by a literal of the same syntactic kind (the
    runner fills them; squawk's parser knows no psql)."""

    def replace(match: re.Match[str]) -> str:
        literal, identifier, _raw = match.groups()
        if literal:
            return "'placeholder'"
        if identifier:
            return '"placeholder"'
        return "1"

    return _VARIABLE.sub(replace, sql)


def squawk_file(squawk: str | None, config: str, path: str, label: str) -> dict[str, Any]:
    """squawk's findings for one SQL file, linted as the runner runs it (one transaction unless
    its header says no-transaction): {status: clean|findings|missing|error, findings, note}."""
    if not squawk:
        return {"status": "missing", "findings": [],
                "note": "squawk not found: not linted (pip install -r requirements.txt installs squawk-cli)"}
    with open(path, encoding="utf-8") as handle:
        raw = handle.read()
    cmd = [squawk, "--reporter", "gcc", "--stdin-filepath", label]
    if config and os.path.isfile(config):
        cmd[1:1] = ["--config", config]
    if "no-transaction" not in file_directives(raw):
        cmd.append("--assume-in-transaction")
    try:
        done = subprocess.run(cmd, input=squawk_placeholders(raw), capture_output=True, text=True,
                              check=False, timeout=SQUAWK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"status": "error", "findings": [], "note": f"squawk did not run: {exc}"}
    findings = []
    for line in done.stdout.splitlines():
        match = _GCC_LINE.match(line.strip())
        if match:
            findings.append({"line": int(match["line"]) + 1, "column": int(match["column"]), "level": match["level"],
                             "rule": match["rule"], "message": match["message"].strip()})
    if done.returncode != 0 and not findings:
        detail = " ".join((done.stderr or done.stdout).split())[:300]
        return {"status": "error", "findings": [], "note": f"squawk failed (exit {done.returncode}): {detail}"}
    return {"status": "findings" if findings else "clean", "findings": findings, "note": ""}


def human_rows(count: int) -> str:
    return f"{count:,}"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def rows_line(rows: dict[str, dict[str, Any]], total: int | None, reachable: bool) -> str:
    """rows: ~1,100,000 (orders ~1,100,000; order_events not there yet)."""
    if not rows:
        return "none (it locks no table)"
    if not reachable:
        return "no database (the planner's estimates need the target database)"
    parts = [f"{table} ~{human_rows(r['rows'])}" if r["rows"] is not None else f"{table} {r['note']}"
             for table, r in rows.items()]
    return f"~{human_rows(total or 0)} ({'; '.join(parts)})"


def duration_line(duration: dict[str, Any]) -> str:
    mark = "~" if duration["source"] == "estimate" else ""
    return f"{mark}{human_seconds(duration['seconds'])} ({duration['note']})"


def squawk_line(lint: dict[str, Any]) -> str:
    if lint["status"] == "clean":
        return "clean"
    if lint["status"] != "findings":
        return lint["note"]
    found = lint["findings"]
    return f"{len(found)} finding{'s' if len(found) != 1 else ''}: " + "; ".join(
        f"line {f['line']} {f['rule']} ({f['level']}): {f['message']}" for f in found)


def review(p: dict[str, Any], db: dict[str, Any] | None, db_note: str,
           rehearsal: dict[str, Any] | None, rehearsal_path: str) -> dict[str, Any]:
    """Per phase and step of the run: rows (estimates), expected duration and its source, squawk."""
    label = (p.get("sql_label") or "files/sql").rstrip("/")
    squawk = find_squawk(p.get("squawk") or "")
    rehearsed = {str(x.get("phase")): x for x in (rehearsal or {}).get("phases") or []
                 if x.get("status") == "succeeded"}
    ledger = (db or {}).get("ledger") or {}
    tables = (db or {}).get("tables") or {}
    rehearsed_at = f"measured in the rehearsal of {((rehearsal or {}).get('context') or {}).get('started_at', '?')}"
    unknown = "" if db is not None else ", rows unknown (no database)"
    phases = []
    for item in sorted(p["phases"], key=lambda x: str(x["phase"])):
        number = str(item["phase"])
        steps = []
        for step in item.get("steps") or []:
            file = str(step["file"])
            rows: dict[str, Any] = {}
            for table in locked_tables(step):
                if db is None:
                    rows[table] = {"rows": None, "note": "no database"}
                elif table not in tables:
                    rows[table] = {"rows": None, "note": "not there yet"}
                elif tables[table]["kind"] == "v":
                    rows[table] = {"rows": None, "note": "a view"}
                elif tables[table]["rows"] is None:
                    rows[table] = {"rows": None, "note": "never analyzed"}
                else:
                    rows[table] = {"rows": tables[table]["rows"], "note": ""}
            known = [r["rows"] for r in rows.values() if r["rows"] is not None]
            total = sum(known) if known else (0 if db is not None and not rows else None)
            measured = step_seconds((rehearsed.get(number) or {}).get("steps"), file)
            if measured is not None:
                duration = {"seconds": measured, "source": "rehearsal", "note": rehearsed_at}
            elif step_seconds((ledger.get(number) or {}).get("steps"), file) is not None:
                duration = {"seconds": step_seconds(ledger[number]["steps"], file), "source": "ledger",
                            "note": f"measured in this database's run of {ledger[number]['finished_at']}"}
            else:
                duration = {"seconds": size_estimate(str(step.get("kind", "")), total), "source": "estimate",
                            "note": "ESTIMATE, size model" + unknown}
            lint = squawk_file(squawk, p.get("squawk_config") or "", os.path.join(p["sql_root"], file),
                               f"{label}/{file}")
            steps.append({"file": file, "rows": rows, "rows_total": total, "duration": duration, "squawk": lint,
                          "text": {"rows": rows_line(rows, total, db is not None), "duration": duration_line(duration),
                                   "squawk": squawk_line(lint)}})
        if number in rehearsed and rehearsed[number].get("duration_s") is not None:
            phase_duration = {"seconds": float(rehearsed[number]["duration_s"]), "source": "rehearsal",
                              "note": rehearsed_at}
        elif number in ledger and ledger[number].get("seconds") is not None:
            phase_duration = {"seconds": round(float(ledger[number]["seconds"]), 1), "source": "ledger",
                              "note": f"measured in this database's run of {ledger[number]['finished_at']}"}
        else:
            estimated = any(s["duration"]["source"] == "estimate" for s in steps)
            phase_duration = {"seconds": round(sum(s["duration"]["seconds"] for s in steps), 1),
                              "source": "estimate" if estimated else "steps",
                              "note": ("ESTIMATE: the sum of its steps" if estimated
                                       else "the sum of its steps' measured durations")}
        phases.append({"phase": number, "duration": phase_duration, "duration_text": duration_line(phase_duration),
                       "steps": steps})
    return json_safe({
        "database": {"reachable": db is not None, "note": db_note},
        "rehearsal": ({"report": rehearsal_path, "started_at": (rehearsal.get("context") or {}).get("started_at"),
                       "verdict": rehearsal.get("verdict")} if rehearsal else None),
        "squawk": {"path": squawk or "", "config": p.get("squawk_config") or "",
                   "note": "" if squawk else "squawk not found: the plan's files are not linted"},
        "size_model": {kind: {"fixed_s": fixed, "s_per_million_rows": per_million}
                       for kind, (fixed, per_million) in SIZE_MODEL.items()},
        "phases": phases,
    })
