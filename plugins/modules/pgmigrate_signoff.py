#!/usr/bin/python
# The sign-off sheet (strategy section 8) as data in migration_ledger.approvals: record a role's
# decision (go / no-go), check that every required role's latest decision is a recent 'go'
# (the production gate and the go/no-go checkpoint between phases), list the sheet.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_signoff
short_description: Record and check the migration's approvals (migration_ledger.approvals)
description:
  - C(record) appends a decision; creates the approvals table when missing (the ledger schema
    must exist, created by pgmigrate_ledger init).
  - C(check) never writes and never fails; it returns C(ok), what is missing and who said no-go.
  - C(list) returns the latest decision of every role, both stages.
options:
  action: {type: str, required: true, choices: [record, check, list]}
  stage: {type: str, default: pre, choices: [pre, post]}
  role: {type: str}
  name: {type: str}
  decision: {type: str, default: go, choices: [go, no-go]}
  note: {type: str}
  environment: {type: str}
  recorded_by: {type: str}
  required: {type: list, elements: str, default: []}
  valid_hours: {type: float, default: 168}
  approvals_sql: {type: path}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    connect,
    fetch_dicts,
    json_safe,
    transaction,
)

TABLE = f"{LEDGER_SCHEMA}.approvals"


def table_exists(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
        exists = cur.fetchone()[0]
    conn.commit()
    return exists


def latest(conn, valid_hours: float | None = None) -> list[dict]:
    """The latest decision of every (stage, role), with whether it is still recent."""
    if not table_exists(conn):
        return []
    with conn.cursor() as cur:
        rows = fetch_dicts(cur, f"""
            SELECT DISTINCT ON (stage, lower(role)) stage, role, name, decision, note, environment,
                   recorded_by, recorded_at,
                   (%(hours)s::float8 IS NULL
                    OR recorded_at > clock_timestamp() - make_interval(secs => %(hours)s::float8 * 3600))
                     AS current
              FROM {TABLE}
             ORDER BY stage, lower(role), recorded_at DESC, id DESC""", {"hours": valid_hours})
    conn.commit()
    return json_safe(rows)


def do_check(module, conn) -> dict:
    p = module.params
    sheet = [r for r in latest(conn, p["valid_hours"]) if r["stage"] == "pre"]
    by_role = {r["role"].lower(): r for r in sheet}
    approvals, missing, stale = [], [], []
    for role in p["required"]:
        row = by_role.get(role.lower())
        if row is None:
            missing.append(role)
        elif row["decision"] == "go" and not row["current"]:
            stale.append(f"{role} ({row['name']}, {row['recorded_at']})")
        elif row["decision"] == "go":
            approvals.append(row)
    no_go = [r for r in sheet if r["decision"] == "no-go"]
    reasons = []
    if no_go:
        reasons.append("no-go from " + "; ".join(
            f"{r['role']} {r['name']} at {r['recorded_at']}" + (f" ({r['note']})" if r["note"] else "")
            for r in no_go))
    if missing:
        reasons.append("no approval recorded for " + ", ".join(missing))
    if stale:
        reasons.append(f"approvals older than {p['valid_hours']:g} h: " + ", ".join(stale))
    return {"changed": False, "ok": not reasons, "approvals": approvals, "missing": missing,
            "no_go": no_go, "stale": stale, "reason": "; ".join(reasons), "sheet": sheet,
            "approved_by": "; ".join(f"{r['role']}: {r['name']}" for r in approvals)}


def do_record(module, conn) -> dict:
    p = module.params
    if module.check_mode:
        return {"changed": True, "msg": f"would record {p['decision']} by {p['role']} {p['name']}"}
    with transaction(conn) as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
        if not cur.fetchone()[0]:
            raise MigrationError("the ledger is missing: create it first (pgmigrate_ledger action=init)")
        with open(p["approvals_sql"], encoding="utf-8") as handle:
            cur.execute(handle.read())
        cur.execute(
            f"""INSERT INTO {TABLE} (stage, role, name, decision, note, environment, recorded_by)
                VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, recorded_at""",
            (p["stage"], p["role"], p["name"], p["decision"], p["note"], p["environment"],
             p["recorded_by"]))
        record_id, at = cur.fetchone()
    return {"changed": True, "id": record_id, "recorded_at": str(at),
            "msg": f"recorded {p['decision']} for {p['stage']}-migration role {p['role']} by {p['name']} at {at}"}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["record", "check", "list"]),
            stage=dict(type="str", default="pre", choices=["pre", "post"]),
            role=dict(type="str"),
            name=dict(type="str"),
            decision=dict(type="str", default="go", choices=["go", "no-go"]),
            note=dict(type="str"),
            environment=dict(type="str"),
            recorded_by=dict(type="str"),
            required=dict(type="list", elements="str", default=[]),
            valid_hours=dict(type="float", default=168),
            approvals_sql=dict(type="path"),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        required_if=[("action", "record", ["role", "name", "environment", "recorded_by", "approvals_sql"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        conn = connect(p, "pgmigrate-signoff")
        try:
            if p["action"] == "record":
                result = do_record(module, conn)
            elif p["action"] == "check":
                result = do_check(module, conn)
            else:
                result = {"changed": False, "sheet": latest(conn)}
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
