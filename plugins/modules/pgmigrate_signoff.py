#!/usr/bin/python
# The sign-off sheet (strategy section 8) as data in migration_ledger.approvals: record a role's
# decision (go / no-go), check that every required role's latest decision is a recent 'go'
# (the production gate and the go/no-go checkpoint between phases), list the sheet. Signed
# sign-offs: the run's plan as canonical text, and every required role's SSH signature of it
# verified with ssh-keygen -Y (docs/monitoring.md#signed-sign-offs). The plan, its checksum and
# the review printed beside it live in module_utils/pgmigrate_plan.py.
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
  - C(plan) returns the run's plan, a canonical text of everything the run's phases execute (the
    migration's manifest - its id, its data besides the phases as one sha256, each step's file,
    kind, locks, revert and verify - every SQL file's path and sha256, reverts' and verifies'
    included, the phases' parameters, the target database's host, port and name, never the
    password) and its sha256, the plan's checksum; it does not connect. With I(plan_dir), writes
    it to C(plan-<plan_label>-<sha256>.txt) there, for the approver to sign with
    C(ssh-keygen -Y sign).
  - C(review) returns the same plan and checksum and, per step, the planner's row estimates of
    the tables it locks (C(pg_class.reltuples), read in one read-only transaction when the
    database is reachable; without it, says so and goes on), its expected duration (the latest
    rehearsal report's or this database's ledger's measurement, else a size model, marked as an
    estimate) and squawk's findings for its file (said so when squawk is missing). Changes nothing.
  - C(verify) never writes; it returns C(ok) when the latest decision of every role of
    I(signers) is a C(go) carrying an SSH signature of this plan, made by a key of
    I(allowed_signers) whose principal may sign for that role (C(ssh-keygen -Y find-principals)
    and C(-Y verify)), and otherwise what is missing, not allowed or stale, and what to do.
  - C(verify) with I(signature_file) verifies that one signature for I(role) and fails when it
    does not hold, without connecting (approve.yml, before it creates the ledger).
  - C(record) with I(signature_file) verifies the signature for I(role) first, as C(verify)
    does, and records nothing when it does not hold; the signer's principal is the name recorded.
options:
  action:
    description: Record a decision, check the sheet, list it, write the plan, verify the signatures, or review the plan.
    type: str
    required: true
    choices: [record, check, list, plan, verify, review]
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
  phases:
    description: >-
      C(plan), C(verify), C(review), C(record) with I(signature_file) - the run's phases, each a
      dict with C(phase), C(files) (its SQL files), C(checksum_params) (the parameters folded into
      its checksum) and, from the manifest, C(title), C(role), C(requires) and C(steps), as
      roles/migration/tasks/plan.yml lists them.
    type: list
    elements: dict
    default: []
  sql_root:
    description: The SQL files' root; the plan names each file as I(sql_label)/its path relative to it.
    type: path
  sql_label:
    description: The SQL root as the plan names it, relative to the project (the same on every machine).
    type: str
    default: files/sql
  manifest:
    description: >-
      C(plan), C(verify), C(review), C(record) - the migration's manifest besides its phases (its
      C(id), prerequisites, tables, access); empty - the plan names no migration.
    type: dict
    default: {}
  plan_dir:
    description: C(plan) - where to write the plan file; not written when unset.
    type: path
  plan_label:
    description: C(plan) - the plan file's name part (the inventory host); C(review) - the host rehearsals name.
    type: str
    default: plan
  signers:
    description: >-
      C(verify) - the roles that must sign, each with the principals (names in I(allowed_signers))
      who may sign for it; C(record) - checks the signer of I(role) against it.
    type: dict
    default: {}
  allowed_signers:
    description: A file in ssh-keygen's ALLOWED SIGNERS format (C(principal [options] keytype key)).
    type: path
  allowed_signers_entries:
    description: More lines of that format, given inline (added to I(allowed_signers)).
    type: list
    elements: str
    default: []
  namespace:
    description: The signature namespace (C(ssh-keygen -Y sign -n)); a signature made for another one fails.
    type: str
    default: pgmigrate-plan
  signature_file:
    description: >-
      C(record), C(verify) - the armored signature of the plan by I(role)'s signer
      (C(ssh-keygen -Y sign) writes C(FILE.sig)).
    type: path
  rehearsal_dir:
    description: >-
      C(review) - where the rehearsal reports are (C(*-rehearsal.json)); default I(plan_dir). The
      newest whose source is I(plan_label) gives the measured durations.
    type: path
  squawk:
    description: C(review) - the squawk executable; default the one beside this Python, else on PATH.
    type: path
  squawk_config:
    description: C(review) - squawk's configuration (the project's C(.squawk.toml)), when it exists.
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

- name: Write the plan of phases 1 and 2 for the approvers to sign
  agency.pgmigrate.pgmigrate_signoff:
    action: plan
    phases:
      - {phase: "1", files: [migrations/ht036/phase1/deploy/010_checks.sql], checksum_params: {}}
    sql_root: migrations/ht036
    plan_dir: reports
    plan_label: production-db
    db_host: db.example.internal
    db_name: app
    db_user: migrator

- name: Verify the DBA's and the product owner's signatures of the plan
  agency.pgmigrate.pgmigrate_signoff:
    action: verify
    phases:
      - {phase: "1", files: [migrations/ht036/phase1/deploy/010_checks.sql], checksum_params: {}}
    sql_root: migrations/ht036
    signers: {DBA: [jane@example.com], Product owner: [sam@example.com]}
    allowed_signers: inventories/production/allowed_signers
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: signed
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
plan:
  description: C(plan), C(verify), C(review) - the plan's canonical text.
  returned: action is plan, verify or review
  type: str
plan_checksum:
  description: C(plan), C(verify), C(review) - the sha256 of the plan's text (what the file name carries).
  returned: action is plan, verify or review
  type: str
review:
  description: >-
    C(review) - C(database) (reachable, note), C(rehearsal) (the report the durations come from),
    C(squawk), C(size_model), and C(phases), each with C(duration) (seconds, source - rehearsal,
    ledger, steps or estimate - and note) and C(steps), each with C(file), C(rows) (by table),
    C(rows_total), C(duration) and C(squawk) (status - clean, findings, missing or error -
    findings, note).
  returned: action is review
  type: dict
plan_file:
  description: C(plan) - the file written, when I(plan_dir) is set.
  returned: action is plan
  type: str
signed:
  description: C(verify) - the signatures that hold, with role, principal and key fingerprint.
  returned: action is verify
  type: list
  elements: dict
problems:
  description: C(verify) - one sentence per role whose signature is missing, not allowed or stale.
  returned: action is verify
  type: list
  elements: str
"""

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_plan import (
    latest_rehearsal,
    plan_changes,
    plan_text,
    read_database,
    review,
    sha256_of,
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


# --- signed sign-offs ---------------------------------------------------------------------

def principals_of(value: Any) -> list[str]:
    """A role's principals: a list, or one name given as a string."""
    return [value] if isinstance(value, str) else [str(name) for name in value or []]


def ssh_keygen(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=stdin, capture_output=True, text=True,
                              check=False, timeout=60)
    except FileNotFoundError as exc:
        raise MigrationError("ssh-keygen was not found: signed sign-offs need OpenSSH's ssh-keygen "
                             "(8.2 or later; Debian's openssh-client) on the controller") from exc


@contextlib.contextmanager
def allowed_signers_file(p: dict[str, Any]) -> Iterator[str]:
    """The allowed signers as one file for ssh-keygen: the inventory's file, with the inline
    entries appended in a private copy."""
    path, entries = p["allowed_signers"], [e.strip() for e in p["allowed_signers_entries"] if e.strip()]
    if not path and not entries:
        raise MigrationError("no allowed signers: set migration_signoff_allowed_signers (a file in "
                             "ssh-keygen's ALLOWED SIGNERS format) or migration_signoff_allowed_signers_entries")
    if path and not os.path.isfile(path):
        raise MigrationError(f"the allowed signers file {path} does not exist: check "
                             "migration_signoff_allowed_signers (a path on the controller)")
    if not entries:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pgmigrate-signers-") as workdir:
        merged = Path(workdir) / "allowed_signers"
        text = Path(path).read_text(encoding="utf-8") if path else ""
        merged.write_text(text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(entries) + "\n",
                          encoding="utf-8")
        yield str(merged)


def another_plan(role: str, who: str, row: dict[str, Any], plan: str) -> str:
    """'' when the sign-off's recorded plan (its checksum, or its text) is this run's; else what
    changed since it was signed and what to do."""
    signed_plan = row.get("plan") or ""
    signed_checksum = row.get("plan_checksum") or (sha256_of(signed_plan) if signed_plan else "")
    if not signed_checksum or signed_checksum == sha256_of(plan):
        return ""
    what = (plan_changes(signed_plan, plan) if signed_plan and sha256_of(signed_plan) == signed_checksum
            else "the signed plan's text is not in the sheet")
    return (f"{role}'s signature ({who}) is of another plan (sha256 {signed_checksum[:12]}; this run's is "
            f"{sha256_of(plan)[:12]}): changed since it was signed: {what}. Review the new plan "
            "(playbooks/plan.yml prints it) and sign it again, or put back what was signed")


def check_signature(role: str, principals: list[str], row: dict[str, Any] | None, plan: str,
                    allowed: str, namespace: str, workdir: str) -> tuple[dict[str, Any] | None, str]:
    """(the signature that holds, '') or (None, what is wrong with role's latest decision and
    what to do)."""
    if row is None:
        return None, f"no signed sign-off recorded for {role}"
    who = row.get("who") or f"{row['name']}, recorded at {row['recorded_at']}"
    if row["decision"] != "go":
        note = f": {row['note']}" if row.get("note") else ""
        return None, f"{role}'s latest decision is a no-go ({who}{note})"
    signature = row.get("signature") or ""
    if not signature:
        return None, (f"{role}'s latest go ({who}) is not signed: free-text approval does not count "
                      "when migration_signoff_signed is true")
    # The plan's checksum the sign-off recorded against this run's: a plan changed since it was
    # signed is refused here, naming what changed, before any signature is checked.
    changed = another_plan(role, who, row, plan)
    if changed:
        return None, changed
    sig_file = Path(workdir) / f"{sha256_of(role)}.sig"
    sig_file.write_text(signature, encoding="utf-8")
    found = ssh_keygen(["-Y", "find-principals", "-s", str(sig_file), "-f", allowed])
    signed_by = found.stdout.split() if found.returncode == 0 else []
    if not signed_by:
        return None, (f"{role}'s signature ({who}) is by a key that is not among the allowed signers: "
                      f"add the approver's public key to migration_signoff_allowed_signers under one of "
                      f"{role}'s principals ({', '.join(principals) or 'none'}), or have one of them sign")
    permitted = [name for name in signed_by if name in principals]
    if not permitted:
        return None, (f"{role}'s signature ({who}) is by {', '.join(signed_by)}, who may not sign for "
                      f"{role} (its principals in migration_signoff_signers: {', '.join(principals) or 'none'}): "
                      f"have one of them sign, or add the principal to the role")
    failures = []
    for principal in permitted:
        verified = ssh_keygen(["-Y", "verify", "-f", allowed, "-I", principal, "-n", namespace,
                               "-s", str(sig_file)], stdin=plan)
        if verified.returncode == 0:
            key = re.search(r"with (\S+) key (\S+)", verified.stdout + verified.stderr)
            return {"role": role, "principal": principal, "key": " ".join(key.groups()) if key else "",
                    "recorded_at": row.get("recorded_at"), "plan_checksum": sha256_of(plan)}, ""
        failures.append(" ".join(line.strip() for line in (verified.stderr + verified.stdout).splitlines()
                                 if line.strip()))
    detail = "; ".join(failure for failure in failures if failure)
    return None, (f"{role}'s signature ({who}) by {', '.join(permitted)} does not verify against this plan "
                  f"in namespace {namespace} ({detail or 'no detail'}): sign this run's plan with "
                  f"ssh-keygen -Y sign -n {namespace}")


def latest_decisions(conn) -> dict[str, dict[str, Any]]:
    """The latest pre-migration decision of every role, by lower-case role, signature included
    (to_jsonb: a ledger from before signed sign-offs has no signature column)."""
    if not table_exists(conn):
        return {}
    with conn.cursor() as cur:
        cur.execute(f"""
            SELECT DISTINCT ON (lower(role)) to_jsonb(a) FROM {TABLE} a
             WHERE stage = 'pre' ORDER BY lower(role), recorded_at DESC, id DESC""")
        rows = [row[0] for row in cur.fetchall()]
    conn.commit()
    return {row["role"].lower(): row for row in json_safe(rows)}


def do_plan(module) -> dict:
    p = module.params
    plan = plan_text(p)
    checksum = sha256_of(plan)
    result = {"changed": False, "plan": plan, "plan_checksum": checksum}
    if p["plan_dir"]:
        # The plan file is what the approver signs: written in check mode too (it changes no
        # database), and only when its content is new.
        path = Path(p["plan_dir"]) / f"plan-{p['plan_label']}-{checksum}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != plan:
            path.write_text(plan, encoding="utf-8")
            result["changed"] = True
        result["plan_file"] = str(path)
    return result


def do_review(module) -> dict:
    """The plan as an approver reads it: its checksum, and per step the planner's estimates (from
    the target database when it is reachable), the expected duration and squawk's findings.
    Changes nothing: the database is read in one read-only transaction, or not at all."""
    p = module.params
    plan = plan_text(p)
    db, note = None, ""
    names = sorted({str(lock.get("table")) for item in p["phases"] for step in item.get("steps") or []
                    for lock in step.get("locks") or [] if isinstance(lock, dict) and lock.get("table")})
    try:
        conn = connect(p, "pgmigrate-plan")
    except MigrationError as exc:
        note = f"no database ({str(exc).splitlines()[0] if str(exc) else 'unreachable'})"
    else:
        try:
            db = read_database(conn, names, [str(item["phase"]) for item in p["phases"]])
            note = "estimates from pg_class.reltuples"
        except Exception as exc:  # noqa: BLE001 - a privilege or a catalog the login may not read
            note = f"no database (cannot read its estimates: {str(exc).strip().splitlines()[0]})"
        finally:
            conn.close()
    rehearsal, rehearsal_path = latest_rehearsal(p["rehearsal_dir"] or p["plan_dir"] or "", p["plan_label"])
    return {"changed": False, "plan": plan, "plan_checksum": sha256_of(plan),
            "review": review(p, db, note, rehearsal, rehearsal_path)}


def do_verify(module, conn) -> dict:
    p = module.params
    plan = plan_text(p)
    rows = latest_decisions(conn)
    signed, problems = [], []
    with allowed_signers_file(p) as allowed, tempfile.TemporaryDirectory(prefix="pgmigrate-sigs-") as workdir:
        for role, principals in p["signers"].items():
            good, problem = check_signature(role, principals_of(principals), rows.get(role.lower()),
                                            plan, allowed, p["namespace"], workdir)
            if good:
                signed.append(good)
            else:
                problems.append(problem)
    return {"changed": False, "ok": not problems and bool(p["signers"]), "signed": signed, "problems": problems,
            "reason": "; ".join(problems) if p["signers"] else "no role must sign (migration_signoff_signers is empty)",
            "plan": plan, "plan_checksum": sha256_of(plan),
            "approved_by": "; ".join(f"{s['role']}: {s['principal']} ({s['key']})" for s in signed)}


def signed_decision(module) -> dict[str, Any]:
    """For record with a signature: the signature checked for its role before anything is written."""
    p = module.params
    if p["decision"] != "go":
        raise MigrationError("a signature records a go: record a no-go without approval_signature_file")
    roles = {role.lower(): (role, principals) for role, principals in p["signers"].items()}
    if p["role"].lower() not in roles:
        raise MigrationError(f"{p['role']} is not a role that signs: migration_signoff_signers names "
                             f"{', '.join(p['signers']) or 'none'}")
    role, principals = roles[p["role"].lower()]
    try:
        signature = Path(p["signature_file"]).read_text(encoding="utf-8")
    except OSError as exc:
        raise MigrationError(f"cannot read the signature file {p['signature_file']}: {exc.strerror}") from exc
    plan = plan_text(p)
    row = {"who": p["signature_file"], "decision": "go", "signature": signature}
    with allowed_signers_file(p) as allowed, tempfile.TemporaryDirectory(prefix="pgmigrate-sigs-") as workdir:
        good, problem = check_signature(role, principals_of(principals), row, plan, allowed,
                                        p["namespace"], workdir)
    if not good:
        raise MigrationError(f"{problem}. Nothing was recorded")
    return {**good, "signature": signature, "plan": plan}


def do_record(module, conn) -> dict:
    p = module.params
    signed = signed_decision(module) if p["signature_file"] else None
    name = signed["principal"] if signed else p["name"]
    if module.check_mode:
        return {"changed": True, "msg": f"would record {p['decision']} by {p['role']} {name}"}
    with transaction(conn) as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
        if not cur.fetchone()[0]:
            raise MigrationError("the ledger is missing: create it first (pgmigrate_ledger action=init)")
        with open(p["approvals_sql"], encoding="utf-8") as handle:
            cur.execute(handle.read())
        cur.execute(
            f"""INSERT INTO {TABLE} (stage, role, name, decision, note, environment, recorded_by,
                                     signature, plan, plan_checksum)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id, recorded_at""",
            (p["stage"], p["role"], name, p["decision"], p["note"], p["environment"], p["recorded_by"],
             signed and signed["signature"], signed and signed["plan"], signed and signed["plan_checksum"]))
        record_id, at = cur.fetchone()
    how = f" (signed with {signed['key']}, plan sha256 {signed['plan_checksum']})" if signed else ""
    return {"changed": True, "id": record_id, "recorded_at": str(at),
            "msg": f"recorded {p['decision']} for {p['stage']}-migration role {p['role']} by {name} at {at}{how}"}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["record", "check", "list", "plan", "verify", "review"]),
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
            phases=dict(type="list", elements="dict", default=[]),
            sql_root=dict(type="path"),
            sql_label=dict(type="str", default="files/sql"),
            manifest=dict(type="dict", default={}),
            plan_dir=dict(type="path"),
            plan_label=dict(type="str", default="plan"),
            signers=dict(type="dict", default={}),
            allowed_signers=dict(type="path"),
            allowed_signers_entries=dict(type="list", elements="str", default=[]),
            namespace=dict(type="str", default="pgmigrate-plan"),
            signature_file=dict(type="path"),
            rehearsal_dir=dict(type="path"),
            squawk=dict(type="path"),
            squawk_config=dict(type="path"),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        required_if=[("action", "record", ["role", "environment", "recorded_by", "approvals_sql"]),
                     ("action", "record", ["name", "signature_file"], True),
                     ("action", "plan", ["sql_root"]), ("action", "verify", ["sql_root"]),
                     ("action", "review", ["sql_root"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        # From the files and the inventory alone: no connection.
        if p["action"] == "plan":
            module.exit_json(**do_plan(module))
        # Reaches the database only to read its estimates, and goes on without it.
        if p["action"] == "review":
            module.exit_json(**do_review(module))
        if p["action"] == "verify" and p["signature_file"]:
            signed = signed_decision(module)
            summary = {key: value for key, value in signed.items() if key not in ("plan", "signature")}
            module.exit_json(changed=False, ok=True, signed=[summary], problems=[], plan=signed["plan"],
                             plan_checksum=signed["plan_checksum"])
        conn = connect(p, "pgmigrate-signoff")
        try:
            if p["action"] == "verify":
                result = do_verify(module, conn)
            elif p["action"] == "record":
                result = do_record(module, conn)
            elif p["action"] == "check":
                result = do_check(module, conn)
            else:
                result = {"changed": False, "sheet": latest(conn)}
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        # A file the manifest names and the checkout lacks: the plan cannot be written.
        module.fail_json(msg=f"cannot read {exc.filename or 'a file of the plan'}: {exc.strerror or exc} "
                             "(every file the manifest names must exist; tests/test_manifest.py checks the tree). "
                             "Nothing was changed.")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
