#!/usr/bin/python
# The sign-off sheet (strategy section 8) as data in migration_ledger.approvals: record a role's
# decision (go / no-go), check that every required role's latest decision is a recent 'go'
# (the production gate and the go/no-go checkpoint between phases), list the sheet.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_signoff
short_description: Record and check the migration's approvals (migration_ledger.approvals)
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - The sign-off sheet (strategy section 8) as data in C(migration_ledger.approvals).
  - C(record) appends a decision; creates the approvals table when missing (the ledger schema
    must exist, created by M(agency.pgmigrate.pgmigrate_ledger) C(action=init)).
  - C(check) never writes and never fails; it returns C(ok), what is missing and who said no-go.
  - C(list) returns the latest decision of every role, both stages.
options:
  action:
    description: Record a decision, check the sheet, or list it.
    type: str
    required: true
    choices: [record, check, list]
  stage:
    description: >-
      C(record) - before the migration (C(pre)) or after it (C(post)); C(check) reads the C(pre)
      decisions.
    type: str
    default: pre
    choices: [pre, post]
  role:
    description: C(record) - the role deciding (for example C(dba), C(product_owner)).
    type: str
  name:
    description: C(record) - the person deciding.
    type: str
  decision:
    description: C(record) - the decision.
    type: str
    default: go
    choices: [go, no-go]
  note:
    description: C(record) - a note kept with the decision.
    type: str
  environment:
    description: C(record) - the environment the decision is for.
    type: str
  recorded_by:
    description: C(record) - who entered the decision.
    type: str
  required:
    description: C(check) - the roles whose latest decision must be a recent C(go).
    type: list
    elements: str
    default: []
  valid_hours:
    description: C(check) - how long a go stays valid, in hours.
    type: float
    default: 168
  approvals_sql:
    description: C(record) - the approvals table's DDL (C(files/sql/ledger/approvals.sql)).
    type: path
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Record the DBA's go
  agency.pgmigrate.pgmigrate_signoff:
    action: record
    role: dba
    name: Alice Example
    decision: go
    environment: production
    recorded_by: alice
    approvals_sql: files/sql/ledger/approvals.sql
    db_host: db.example.internal
    db_name: app
    db_user: migrator

- name: Check every required role said go within a week
  agency.pgmigrate.pgmigrate_signoff:
    action: check
    required: [dba, product_owner]
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: signoff
"""

RETURN = r"""
ok:
  description: C(check) - whether every required role's latest decision is a recent go.
  returned: action is check
  type: bool
missing:
  description: C(check) - required roles without a decision.
  returned: action is check
  type: list
  elements: str
no_go:
  description: C(check) - the latest decisions that are no-go.
  returned: action is check
  type: list
  elements: dict
stale:
  description: C(check) - required roles whose go is older than I(valid_hours), with who and when.
  returned: action is check
  type: list
  elements: str
reason:
  description: C(check) - why the sheet is not ok; empty when it is.
  returned: action is check
  type: str
approved_by:
  description: "C(check) - C(role: name) of every approval, joined."
  returned: action is check
  type: str
approvals:
  description: C(check) - the approvals that count.
  returned: action is check
  type: list
  elements: dict
sheet:
  description: The latest decision of every role.
  returned: action is check or list
  type: list
  elements: dict
id:
  description: C(record) - the id of the decision recorded.
  returned: action is record
  type: int
recorded_at:
  description: C(record) - when it was recorded.
  returned: action is record
  type: str
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
