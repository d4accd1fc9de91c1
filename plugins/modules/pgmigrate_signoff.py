#!/usr/bin/python
# The sign-off sheet (strategy section 8) as data in migration_ledger.approvals: record a role's
# decision (go / no-go), check that every required role's latest decision is a recent 'go'
# (the production gate and the go/no-go checkpoint between phases), list the sheet. Signed
# sign-offs: the run's plan as canonical text, and every required role's SSH signature of it
# verified with ssh-keygen -Y (docs/monitoring.md#signed-sign-offs).
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
  - C(plan) returns the run's plan, a canonical text of everything the run's phases execute (each
    SQL file's path and sha256, the phases' parameters, the target database's host, port and
    name, never the password) and its sha256; it does not connect. With I(plan_dir), writes it to
    C(plan-<plan_label>-<sha256>.txt) there, for the approver to sign with C(ssh-keygen -Y sign).
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
    description: Record a decision, check the sheet, list it, write the plan, or verify the signatures.
    type: str
    required: true
    choices: [record, check, list, plan, verify]
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
      C(plan), C(verify), C(record) with I(signature_file) - the run's phases, each a dict with
      C(phase), C(files) (its SQL files) and C(checksum_params) (the parameters folded into its
      checksum), as roles/migration/tasks/plan.yml lists them.
    type: list
    elements: dict
    default: []
  sql_root:
    description: The migration's directory (C(migrations/ht036)), the root of its SQL files; the plan names each file by
      the directory's name and the file's path in it (C(ht036/phase1/deploy/010_backup_tables.sql)).
    type: path
  plan_dir:
    description: C(plan) - where to write the plan file; not written when unset.
    type: path
  plan_label:
    description: C(plan) - the plan file's name part (the inventory host).
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
  description: C(plan), C(verify) - the plan's canonical text.
  returned: action is plan or verify
  type: str
plan_checksum:
  description: C(plan), C(verify) - the sha256 of the plan's text (what the file name carries).
  returned: action is plan or verify
  type: str
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
import hashlib
import json
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
    file_checksums,
    json_safe,
    sql_label,
    transaction,
)

TABLE = f"{LEDGER_SCHEMA}.approvals"
# The plan's first line: a signature of one format never verifies against another.
PLAN_HEADER = "pgmigrate plan 1"


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

def plan_field(value: Any) -> str:
    """A value as one token: quoted (JSON) when it holds a space, a quote or a line break, so no
    two plans print alike."""
    text = str(value)
    return text if re.fullmatch(r'[^\s"]+', text) else json.dumps(text)


def principals_of(value: Any) -> list[str]:
    """A role's principals: a list, or one name given as a string."""
    return [value] if isinstance(value, str) else [str(name) for name in value or []]


def plan_text(p: dict[str, Any]) -> str:
    """The run's plan: one line per fact, in a fixed order, so the same run always gives the same
    bytes. The files are those the ledger checksums for its drift check (the same list), named
    as in the checkout; the database by where it is, never by its credentials."""
    ordered = sorted(p["phases"], key=lambda item: str(item["phase"]))
    lines = [PLAN_HEADER,
             f"database host={plan_field(p['db_host'])} port={p['db_port']} dbname={plan_field(p['db_name'])}",
             "phases " + " ".join(str(item["phase"]) for item in ordered)]
    for item in ordered:
        for key, value in sorted((item.get("checksum_params") or {}).items()):
            lines.append(f"param {item['phase']} {key}={plan_field(value)}")
    for item in ordered:
        for path, digest in sorted(file_checksums(item.get("files") or [], p["sql_root"]).items()):
            lines.append(f"file {plan_field(sql_label(p['sql_root'], path))} sha256={digest}")
    return "\n".join(lines) + "\n"


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def plan_entries(text: str) -> dict[str, str]:
    """A plan's lines by what they are about (a file's path, a phase's parameter, the database)."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        word, rest = line.partition(" ")[::2]
        if word == "file":
            path, digest = rest.rpartition(" ")[::2]
            entries[path] = digest.removeprefix("sha256=")[:12]
        elif word == "param":
            phase, assignment = rest.partition(" ")[::2]
            name, value = assignment.partition("=")[::2]
            entries[f"phase {phase}'s {name}"] = value
        elif word in ("database", "phases"):
            entries[word] = rest
    return entries


def plan_changes(signed: str, current: str) -> str:
    """What differs between the plan that was signed and this run's, in a sentence."""
    old, new = plan_entries(signed), plan_entries(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            changes.append(f"{key} (no longer in the plan)")
        elif key not in old:
            changes.append(f"{key} (new)")
        elif old[key] != new[key]:
            # A file's key is its path (ht036/phase1/...); the others name no directory.
            what = "sha256 " if "/" in key else ""
            changes.append(f"{key} ({what}{old[key]} -> {new[key]})")
    return ", ".join(changes) or "the plan's format"


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
    signed_plan = row.get("plan") or ""
    if signed_plan and sha256_of(signed_plan) != sha256_of(plan):
        return None, (f"{role}'s signature ({who}) is of another plan (sha256 {sha256_of(signed_plan)[:12]}; "
                      f"this run's is {sha256_of(plan)[:12]}): changed since it was signed: "
                      f"{plan_changes(signed_plan, plan)}. Review the new plan and sign it again, or put "
                      "back what was signed")
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
            action=dict(type="str", required=True, choices=["record", "check", "list", "plan", "verify"]),
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
            plan_dir=dict(type="path"),
            plan_label=dict(type="str", default="plan"),
            signers=dict(type="dict", default={}),
            allowed_signers=dict(type="path"),
            allowed_signers_entries=dict(type="list", elements="str", default=[]),
            namespace=dict(type="str", default="pgmigrate-plan"),
            signature_file=dict(type="path"),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        required_if=[("action", "record", ["role", "environment", "recorded_by", "approvals_sql"]),
                     ("action", "record", ["name", "signature_file"], True),
                     ("action", "plan", ["sql_root"]), ("action", "verify", ["sql_root"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        # From the files and the inventory alone: no connection.
        if p["action"] == "plan":
            module.exit_json(**do_plan(module))
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
    module.exit_json(**result)


if __name__ == "__main__":
    main()
