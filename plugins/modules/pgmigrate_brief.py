#!/usr/bin/python
# The pre-migration briefing (strategy 2.2, "24 hours before"): what will run on this database,
# for how long (the durations of the latest rehearsal of its clone, or a size-based estimate
# marked as such), when (the window the operator gives), what stops it (the go/no-go checkpoints
# and abort criteria), how to undo it (the rollback commands), who has not signed yet, and what
# the strategy's delete rules will do to the application's data. Read-only: one READ ONLY
# transaction; it creates nothing, not even the ledger. Written as JSON and Markdown.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_brief
short_description: Write the pre-migration briefing (strategy 2.2) from the database, the ledger and the rehearsals
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - The briefing sent 24 hours before - what will run on this database, for how long, when (the
    window I(window_start)), what stops it (the go/no-go checkpoints and abort criteria), how to
    undo it (the rollback commands), who has not signed yet, and what the strategy's delete rules
    will do to the application's data. Written as I(report_dir)/I(stem).json and I(stem).md.
  - Reads the database in one read-only transaction (sizes, row estimates, the ledger and the
    sign-off sheet when they exist, the migration's delete-rules query I(delete_rules)) and
    the rehearsal reports under I(rehearsal_dir); changes nothing in the database, not even the
    ledger.
  - Durations come from the latest rehearsal whose source is this host (its C(context.source)
    starts with I(host)); without one, from a size-based estimate, marked as such.
  - Never reports a change (a briefing is a document); in check mode nothing is written.
options:
  report_dir:
    description: Where the briefing goes (created 0750; files 0640).
    type: path
    required: true
  stem:
    description: The files' name without extension (no directories).
    type: str
    required: true
  host:
    type: str
    required: true
    description: The inventory host (a rehearsal names its source by it).
  environment:
    description: The environment, shown in the briefing.
    type: str
    default: local
  rehearsal_dir:
    type: path
    description: Where rehearsal reports are (default I(report_dir)).
  window_start:
    type: str
    default: ""
    description: >-
      The window's start, ISO 8601 (UTC when no offset); empty - not scheduled. A bad value is
      refused before anything is read.
  phase_titles:
    description: Phase number to title; the phases the briefing covers.
    type: dict
    required: true
  applied:
    description: The phases applied already (shown as such).
    type: list
    elements: str
    default: []
  checkpoints:
    type: dict
    default: {}
    description: "Thresholds, abort criteria and switches, for the text."
  signoff_roles:
    description: The roles of the sign-off sheet.
    type: list
    elements: str
    default: []
  signoff_required:
    description: The roles whose go is required.
    type: list
    elements: str
    default: []
  valid_hours:
    description: How long a go stays valid, in hours.
    type: float
    default: 168
  rollback_commands:
    description: The rollback commands to print, each C({when, command}).
    type: list
    elements: dict
    default: []
  drain_method:
    description: >-
      What phase 3 will start to drain the transition's queue (C(drain_method) of the drain role):
      C(auto) - pg_cron where the database has it, else a worker on the controller.
    type: str
    default: auto
    choices: [auto, pg_cron, worker, none]
  channels:
    type: dict
    default: {}
    description: "Which notification channels are set (names, never secrets)."
  tables:
    type: list
    elements: str
    default: []
    description: The tables whose size and row estimate the briefing shows, in order (the migration's).
  scale_table:
    type: str
    description: >-
      The table whose rows scale the size-based estimate (the migration's manifest,
      C(brief.scale_table)); its count is the briefing's C(database.overrides). None - 0.
  estimate:
    type: dict
    default: {}
    description: >-
      The size-based estimate per phase where no rehearsal gives its duration (the migration's
      manifest, C(brief.estimate)) - C([fixed seconds, seconds per MiB of the database, seconds per
      1000 rows of scale_table]); a phase it does not name - C([1, 0, 0]).
  delete_rules:
    type: dict
    default: {}
    description:
      - What the migration's delete rules will do to the application's data (its manifest's
        C(brief.delete_rules)) - C(file), a query returning rows of (name, value), the briefing's
        C(delete_rules) (names starting with C(_) only fill the text); C(markdown), a file, the
        briefing's section; C(summary), its summary's clause; both with C({name}) filled in.
      - Empty - no delete rules in the briefing.
  migration_dir:
    type: path
    description: The migration's directory; the files I(delete_rules) names are relative to it.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Write the briefing for tomorrow's window
  agency.pgmigrate.pgmigrate_brief:
    report_dir: reports
    stem: briefing-db1
    host: db1
    environment: production
    window_start: "2026-01-02T22:00:00Z"
    phase_titles: {"1": Preparation, "2": Schema, "3": Data migration}
    signoff_roles: [dba, product_owner]
    signoff_required: [dba]
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: briefing
"""

RETURN = r"""
briefing:
  description: >-
    The briefing as data (phases with durations and their source, window, checkpoints, sign-offs,
    delete rules).
  returned: success
  type: dict
markdown:
  description: The briefing as Markdown.
  returned: success
  type: str
summary:
  description: The briefing in one line.
  returned: success
  type: str
paths:
  description: The files (C(json), C(md)), written unless in check mode.
  returned: success
  type: dict
"""

import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils import pgmigrate_markdown as md
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    connect,
    fetch_dicts,
    json_safe,
    quote_ident,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain import (
    pg_cron_version,
    seconds_schedule,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    migration_sql,
    named_values,
    report_pair_paths,
    utcnow,
    write_report_pair,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_plan import latest_rehearsal

# Size-based estimate where no rehearsal exists, per phase (the migration's manifest,
# brief.estimate): (fixed seconds, seconds per MiB of the database, seconds per 1000 rows of the
# scale table). A phase it does not name: a fixed second.
DEFAULT_ESTIMATE = (1.0, 0.0, 0.0)
DELETE_RULES_KEYS = ("file", "markdown", "summary")


def delete_rules_plan(migration_dir: str | None, rules: dict | None) -> dict:
    """The migration's brief.delete_rules, its files read and checked: {sql, markdown, summary}
    (empty: no delete rules in the briefing)."""
    if not rules:
        return {}
    unknown = sorted(set(rules) - set(DELETE_RULES_KEYS)) if isinstance(rules, dict) else ["(not a mapping)"]
    if unknown or not rules.get("file"):
        raise MigrationError(f"the migration's brief.delete_rules needs a file (and may have markdown and summary); "
                             f"unknown: {', '.join(unknown) or 'none'} (docs/writing-a-migration.md)")
    return {"sql": migration_sql(migration_dir, rules["file"]),
            "markdown": migration_sql(migration_dir, rules["markdown"]) if rules.get("markdown") else "",
            "summary": str(rules.get("summary") or "")}


def fill(text: str, facts: dict) -> str:
    """The migration's text with {name} replaced by its delete-rules facts."""
    try:
        return text.format_map(facts)
    except (KeyError, IndexError, ValueError) as exc:
        raise MigrationError(f"the migration's briefing text names {exc} which its delete rules query does not "
                             "return (docs/writing-a-migration.md)") from exc


def parse_window(text: str) -> datetime.datetime | None:
    if not text:
        return None
    value = text.strip().replace("Z", "+00:00").replace(" ", "T", 1)
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise MigrationError(
            f"migration_window_start={text!r} is not a date and time: give ISO 8601, e.g. "
            "-e migration_window_start=2026-12-02T22:00Z (UTC when no offset). Nothing was read or sent.") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def read_database(conn, tables: list[str], scale_table: str | None, rules_sql: str) -> dict:
    out: dict = {}
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute("""SELECT current_setting('server_version'), pg_database_size(current_database()),
                              pg_is_in_recovery()""")
        out["server_version"], out["database_size_bytes"], out["in_recovery"] = cur.fetchone()
        out["tables"] = fetch_dicts(cur, """
            SELECT c.relname AS table, greatest(c.reltuples, 0)::bigint AS rows_estimate,
                   pg_total_relation_size(c.oid) AS total_bytes
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(%s)
             ORDER BY array_position(%s, c.relname::text)""", (tables, tables))
        # The rows that scale the size-based estimate (kept as "overrides", HT-036's, in the JSON).
        out["overrides"] = 0
        if scale_table:
            cur.execute(f"SELECT count(*) FROM {quote_ident(scale_table)}")
            out["overrides"] = int(cur.fetchone()[0])
        # What the migration's delete rules will do (its query: rows of (name, value)).
        out["delete_rules"] = named_values(cur, rules_sql) if rules_sql else {}
        cur.execute("SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
                    (f"{LEDGER_SCHEMA}.history", f"{LEDGER_SCHEMA}.approvals"))
        out["ledger_exists"], approvals_exist = cur.fetchone()
        out["pg_cron_version"] = pg_cron_version(cur)
        out["history"] = fetch_dicts(cur, f"""
            SELECT phase, direction, status, started_at, finished_at
              FROM {LEDGER_SCHEMA}.history ORDER BY id DESC LIMIT 20""") if out["ledger_exists"] else []
        out["approvals"] = fetch_dicts(cur, f"""
            SELECT DISTINCT ON (lower(role)) role, name, decision, note, recorded_at,
                   extract(epoch FROM clock_timestamp() - recorded_at) / 3600 AS age_h
              FROM {LEDGER_SCHEMA}.approvals WHERE stage = 'pre'
             ORDER BY lower(role), recorded_at DESC, id DESC""") if approvals_exist else []
    conn.rollback()
    return json_safe(out)


def estimate(phase: str, db: dict, model: dict) -> float:
    fixed, per_mib, per_k = (float(x) for x in model.get(phase, DEFAULT_ESTIMATE))
    return round(fixed + per_mib * db["database_size_bytes"] / 1048576 + per_k * db["overrides"] / 1000, 1)


def signoffs(approvals: list[dict], roles: list[str], required: list[str], valid_hours: float) -> list[dict]:
    by_role = {a["role"].lower(): a for a in approvals}
    sheet = []
    for role in roles:
        row = by_role.get(role.lower())
        if row is None:
            state = "missing"
        elif row["decision"] == "no-go":
            state = "no-go"
        elif float(row["age_h"]) > valid_hours:
            state = f"stale (older than {valid_hours:g} h)"
        else:
            state = "go"
        sheet.append({"role": role, "state": state, "required": role.lower() in [r.lower() for r in required],
                      "name": (row or {}).get("name"), "recorded_at": (row or {}).get("recorded_at"),
                      "note": (row or {}).get("note")})
    return sheet


def human_s(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def build(p: dict, db: dict, rehearsal: dict | None, rehearsal_path: str) -> dict:
    durations = {str(x["phase"]): x for x in (rehearsal or {}).get("phases", [])}
    phases = []
    for number in sorted(p["phase_titles"]):
        seen = durations.get(number)
        if seen is not None and seen.get("status") == "succeeded":
            phases.append({"phase": number, "title": p["phase_titles"][number], "seconds": float(seen["duration_s"]),
                           "source": "rehearsal", "rows": seen.get("rows"),
                           "applied": number in p["applied"]})
        else:
            phases.append({"phase": number, "title": p["phase_titles"][number],
                           "seconds": estimate(number, db, p["estimate"]),
                           "source": "estimate", "rows": None, "applied": number in p["applied"]})
    todo = [x for x in phases if not x["applied"]]
    total = round(sum(x["seconds"] for x in todo), 1)
    window = parse_window(p["window_start"])
    now = datetime.datetime.now(datetime.UTC)
    win = None
    if window is not None:
        hours_before = (window - now).total_seconds() / 3600
        win = {"start": window.isoformat(), "expected_end": (window + datetime.timedelta(seconds=total)).isoformat(),
               "hours_before": round(hours_before, 1),
               "note": ("the window is in the past" if hours_before < 0 else
                        "less than 24 h before the window (strategy 2.2 asks for the briefing 24 h before)"
                        if hours_before < 24 else "")}
    sheet = signoffs(db["approvals"], p["signoff_roles"], p["signoff_required"], p["valid_hours"])
    return json_safe({
        "kind": "briefing", "at": utcnow(), "host": p["host"], "environment": p["environment"],
        "database": {k: db[k] for k in ("server_version", "database_size_bytes", "in_recovery", "tables",
                                        "overrides", "ledger_exists")},
        "applied": p["applied"], "recent_history": db["history"],
        "rehearsal": ({"report": rehearsal_path, "started_at": rehearsal["context"].get("started_at"),
                       "staging": rehearsal["context"].get("staging"), "verdict": rehearsal.get("verdict"),
                       "reason": rehearsal.get("reason"),
                       "clone_rows": (rehearsal.get("clone") or {}).get("rows")} if rehearsal else None),
        "phases": phases, "total_seconds": total, "window": win,
        "checkpoints": p["checkpoints"], "rollback": p["rollback_commands"],
        "signoffs": sheet, "signoffs_missing": [s["role"] for s in sheet if s["state"] != "go"],
        "delete_rules": {k: v for k, v in db["delete_rules"].items() if not k.startswith("_")},
        "channels": p["channels"],
        "drain": drain_plan(p["drain_method"], db["pg_cron_version"]),
    })


def drain_plan(method: str, cron_version: str | None) -> dict:
    """What will drain the transition's queue from phase 3 until complete.yml."""
    if method == "auto":
        method = "pg_cron" if cron_version else "worker"
    if method == "pg_cron" and cron_version:
        every = "every second" if seconds_schedule(cron_version) else "every minute, each run draining for a minute"
        says = (f"a pg_cron job in the database (pg_cron {cron_version}, {every}), scheduled by phase 3, "
                "unscheduled by complete.yml or a rollback")
    elif method == "pg_cron":
        says = ("NOTHING YET: drain_method is pg_cron but this database has no pg_cron extension; phase 3 will "
                "refuse to start the drain (install pg_cron, or drain_method: worker)")
    elif method == "worker":
        says = ("a worker process on this controller (playbooks/drain.yml), started by phase 3 and restarted "
                "by a cron entry within a minute when it dies; the controller must stay up until complete.yml")
    else:
        says = ("NOTHING (drain_method: none): the queue grows until complete.yml or a rollback drains it; "
                "what installations derive in other rows lags until then")
    by = {"pg_cron": "a pg_cron job" if cron_version else "NOTHING (no pg_cron here)",
          "worker": "a worker on the controller"}.get(method, "NOTHING (drain_method none)")
    return {"method": method, "pg_cron_version": cron_version, "says": says, "by": by}


def markdown(b: dict, texts: dict) -> str:
    db = b["database"]
    out = [f"# Pre-migration briefing: {b['host']} ({b['environment']})", "",
           f"Prepared {b['at']} (strategy 2.2: the briefing 24 hours before the migration).", ""]
    win = b["window"]
    if win:
        out += [f"**Window**: starts {win['start']}, expected to end about {win['expected_end']} "
                f"({human_s(b['total_seconds'])} of phases still to run), {win['hours_before']:g} h from now"
                + (f" - **{win['note']}**" if win["note"] else "") + ".", ""]
    else:
        out += ["**Window**: not given; rerun with `-e migration_window_start=2026-12-02T22:00Z`.", ""]
    out += ["## The database", "",
            f"PostgreSQL {db['server_version']}{' (a standby in recovery)' if db['in_recovery'] else ''}, "
            f"{db['database_size_bytes'] / 1048576:.1f} MiB; phases applied so far: "
            f"{', '.join(b['applied']) or 'none'}.", ""]
    out += md.table(["table", "rows (estimate)", "size"],
                    [(t["table"], str(t["rows_estimate"]), f"{t['total_bytes'] / 1048576:.1f} MiB")
                     for t in db["tables"]], "lrr")
    out += ["", "## The phases and how long they take", ""]
    if b["rehearsal"]:
        r = b["rehearsal"]
        out += [f"Durations from the latest rehearsal of this database's clone: {r['staging']}, started "
                f"{r['started_at']}, verdict **{r['verdict']}**{(' (' + r['reason'] + ')') if r['reason'] else ''}, "
                f"{r['clone_rows']} rows cloned; report `{r['report']}`.", ""]
    else:
        out += ["**No rehearsal of this database's clone was found**: every duration below is a size-based "
                "ESTIMATE (a fixed cost per phase plus what scales with the database and the overrides). "
                "Rehearse first: `playbooks/rehearse.yml` on the staging inventory.", ""]
    out += md.table(["phase", "what", "duration", "from", "rows"],
                    [(x["phase"], f"{x['title']}{' (applied: skipped)' if x['applied'] else ''}", human_s(x["seconds"]),
                      "rehearsal" if x["source"] == "rehearsal" else md.Markdown("**estimate**"), x["rows"])
                     for x in b["phases"]], "llrlr")
    out += ["", f"Total still to run: {human_s(b['total_seconds'])}.", ""]
    c = b["checkpoints"]
    out += ["## Go/no-go checkpoints and abort criteria", "",
            "A sample is taken before and after every phase; between two phases the checkpoint decides "
            "whether the next one starts. The run stops there (no further phase starts, a `stopped` "
            "message goes out, the host fails at the end) when:", ""]
    out += [f"- {line}" for line in c.get("stops", [])]
    out += ["", "Alerts (strategy 4.2) are sent on every channel when:", ""]
    out += [f"- {line}" for line in c.get("alerts", [])]
    if c.get("notes"):
        out += [""] + [f"{line}" for line in c["notes"]]
    out += ["", "## The rollback plan", ""]
    for cmd in b["rollback"]:
        out += [f"- {cmd['when']}:", f"  `{cmd['command']}`"]
    out += ["", "Every rollback is refused, naming why, when it is unsafe (later phases applied, the "
            "application's objects built on ours), and is recorded in the ledger. Add `--check` to see "
            "the plan first.", "", "## Sign-offs (strategy 8)", ""]
    out += md.table(["role", "state", "by", "at"],
                    [(f"{s['role']}{' (required)' if s['required'] else ''}", s["state"], s["name"] or "",
                      s["recorded_at"] or "") for s in b["signoffs"]])
    missing = b["signoffs_missing"]
    out += ["", (f"**Still missing: {', '.join(missing)}** - record each with `playbooks/approve.yml -e "
                 "approval_role=ROLE -e approved_by=NAME`." if missing else "Every sign-off is recorded as go."), ""]
    # What the migration's delete rules do (its manifest's brief.delete_rules.markdown, filled in).
    if texts.get("markdown"):
        out += texts["markdown"].rstrip("\n").split("\n") + [""]
    out += ["## What drains the transition's queue", "",
            f"From phase 3 until `complete.yml`: {b['drain']['says']}. `playbooks/status.yml` shows the "
            "queue's depth, its oldest entry's age and what drains it; the watch alerts when the age passes "
            "`watch_queue_age_alert_s`.", ""]
    ch = b["channels"]
    if ch:
        out += ["## Where messages go", "", ", ".join(f"{k}: {v}" for k, v in ch.items()), ""]
    return "\n".join(out)


def summary(b: dict, texts: dict) -> str:
    src = (f"durations from the rehearsal of {b['rehearsal']['started_at']}" if b["rehearsal"]
           else "no rehearsal found: durations are size-based ESTIMATES")
    win = f"window starts {b['window']['start']}" if b["window"] else "no window given"
    missing = ", ".join(b["signoffs_missing"]) or "none"
    return (f"pre-migration briefing: {win}; {len([x for x in b['phases'] if not x['applied']])} phase(s), "
            f"about {human_s(b['total_seconds'])} ({src}); sign-offs missing: {missing}; "
            + (f"{texts['summary']}; " if texts.get("summary") else "")
            + f"the transition's queue is drained by {b['drain']['by']}")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            report_dir=dict(type="path", required=True),
            stem=dict(type="str", required=True),
            host=dict(type="str", required=True),
            environment=dict(type="str", default="local"),
            rehearsal_dir=dict(type="path"),
            window_start=dict(type="str", default=""),
            phase_titles=dict(type="dict", required=True),
            applied=dict(type="list", elements="str", default=[]),
            checkpoints=dict(type="dict", default={}),
            signoff_roles=dict(type="list", elements="str", default=[]),
            signoff_required=dict(type="list", elements="str", default=[]),
            valid_hours=dict(type="float", default=168),
            rollback_commands=dict(type="list", elements="dict", default=[]),
            channels=dict(type="dict", default={}),
            drain_method=dict(type="str", default="auto", choices=["auto", "pg_cron", "worker", "none"]),
            tables=dict(type="list", elements="str", default=[]),
            scale_table=dict(type="str"),
            estimate=dict(type="dict", default={}),
            delete_rules=dict(type="dict", default={}),
            migration_dir=dict(type="path"),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    if "/" in p["stem"]:
        module.fail_json(msg="stem must be a file name without directories")
    try:
        parse_window(p["window_start"])  # a bad window is refused before anything is read
        rules = delete_rules_plan(p["migration_dir"], p["delete_rules"])
        conn = connect(p, "pgmigrate-brief")
        try:
            db = read_database(conn, p["tables"], p["scale_table"], rules.get("sql", ""))
        except Exception as exc:  # noqa: BLE001 - a missing prerequisite table, no privilege
            raise MigrationError(f"cannot read the database for the briefing: {str(exc).strip().splitlines()[0]} "
                                 "(the migration's preflight names what is missing: migrate.yml -e phase=all "
                                 "--check)") from exc
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    rehearsal, rehearsal_path = latest_rehearsal(p["rehearsal_dir"] or p["report_dir"], p["host"])
    briefing = build(p, db, rehearsal, rehearsal_path)
    try:
        texts = {k: fill(rules.get(k, ""), db["delete_rules"]) for k in ("markdown", "summary")}
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    text = markdown(briefing, texts)
    paths = report_pair_paths(p["report_dir"], p["stem"])
    if not module.check_mode:
        try:
            write_report_pair(paths, briefing, text)
        except OSError as exc:
            module.fail_json(msg=f"cannot write the briefing in {p['report_dir']}: {exc.strerror or exc} "
                                 "(check migration_report_dir)")
    # A briefing is a document, not a change to a database.
    module.exit_json(changed=False, briefing=briefing, markdown=text, summary=summary(briefing, texts), paths=paths)


if __name__ == "__main__":
    main()
