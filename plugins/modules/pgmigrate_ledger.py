#!/usr/bin/python
# The migration ledger: create it, decide whether a phase may run (gate), record runs.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_ledger
short_description: Read and write the migration ledger (migration_ledger.history)
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - C(init) creates the ledger schema when it is missing.
  - C(gate) decides whether a phase runs - already applied (skip, or refuse on drift), missing
    prerequisites (refuse) - and never writes; every phase of a run (I(phases)) at once, before
    anything changes; returns C(gates) by phase. A phase may rely on the phases listed before it.
  - C(begin) records a running phase; C(finish) records its outcome. With I(sample) (the options
    of M(agency.pgmigrate.pgmigrate_metrics)' C(sample)), C(finish) first takes the after-phase
    sample (stopping the phase's background sampler), returned as C(monitor) like
    M(agency.pgmigrate.pgmigrate_metrics) returns it, and with I(monitoring) records
    C(details.monitoring) - one module call for both.
  - C(status) returns the last finished record of every phase, and the phases whose latest
    run did not finish (C(unfinished)).
options:
  action:
    description: What to do with the ledger.
    type: str
    required: true
    choices: [init, status, gate, begin, finish]
  phase:
    description: The phase recorded (C(begin), C(finish)).
    type: str
  phases:
    description:
      - C(gate) - every phase of the run, in order, each a dict of C(phase), C(requires) (the phases
        it needs applied), C(files) (its SQL files, for the drift check) and C(checksum_params).
    type: list
    elements: dict
    default: []
  direction:
    description: Whether the phase is applied or rolled back.
    type: str
    default: apply
    choices: [apply, rollback]
  files:
    description: C(begin) - the phase's SQL files, whose checksums the record keeps.
    type: list
    elements: path
    default: []
  sql_root:
    description: The directory the SQL file paths are recorded relative to (the migration's, C(migrations/ht036)).
    type: path
  checksum_params:
    description: Parameters that change what the files do, folded into the recorded checksum.
    type: dict
    default: {}
  ledger_sql:
    description: C(init) - the ledger's DDL (C(files/sql/ledger/ledger.sql)).
    type: path
  run_id:
    description: The run's id, recorded with the phase (C(begin)).
    type: str
  record_id:
    description: C(finish) - the record C(begin) returned.
    type: int
  operator:
    description: Who runs the phase (C(begin)).
    type: str
  approved_by:
    description: Who approved the run (C(begin)).
    type: str
  environment:
    description: The environment (C(begin)), for example C(staging) or C(production).
    type: str
  status:
    description: C(finish) - the phase's outcome.
    type: str
    choices: [succeeded, failed]
  rows_affected:
    description: C(finish) - rows the phase changed.
    type: int
  details:
    description: C(finish) - details kept with the record (lock retries, batches, notes).
    type: dict
    default: {}
  error:
    description: C(finish) - the error of a failed phase.
    type: str
  sample:
    description: M(agency.pgmigrate.pgmigrate_metrics)' sample options; C(finish) samples first.
    type: dict
  monitoring:
    type: dict
    description: >-
      C({before, baseline, before_alerts}); C(finish) records C(details.monitoring) with the sample.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Decide which phases of the run may run, before anything changes
  agency.pgmigrate.pgmigrate_ledger:
    action: gate
    sql_root: migrations/ht036
    phases:
      - {phase: "1", requires: [], files: []}
      - {phase: "2", requires: ["1"], files: [migrations/ht036/phase2/deploy/020_tables.sql]}
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: gates

- name: Record phase 2 as running
  agency.pgmigrate.pgmigrate_ledger:
    action: begin
    phase: "2"
    run_id: "{{ run_id }}"
    operator: alice
    environment: staging
    sql_root: migrations/ht036
    files: [migrations/ht036/phase2/deploy/020_tables.sql]
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: record
"""

RETURN = r"""
gates:
  description: C(gate) - by phase, whether it runs (C(run)), why (C(reason)), its checksum and files.
  returned: action is gate
  type: dict
applied:
  description: The phases the ledger says are applied.
  returned: action is gate or status
  type: list
  elements: str
  sample: ["1", "2"]
record_id:
  description: The record C(begin) wrote (null in check mode).
  returned: action is begin
  type: int
interrupted_before:
  description: Earlier C(running) records of the phase marked C(interrupted).
  returned: action is begin
  type: int
duration_s:
  description: How long the phase ran.
  returned: action is finish
  type: float
monitor:
  description: The after-phase sample, as M(agency.pgmigrate.pgmigrate_metrics) returns it.
  returned: action is finish and I(sample) is given
  type: dict
state:
  description: The last finished record of every phase.
  returned: action is status
  type: dict
unfinished:
  description: The phases whose latest run did not finish.
  returned: action is status
  type: dict
ledger_exists:
  description: Whether the ledger schema exists.
  returned: action is status
  type: bool
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    applied_phases,
    combined_checksum,
    connect,
    file_checksums,
    json_safe,
    ledger_exists,
    ledger_state,
    ledger_unfinished,
    sql_label,
    transaction,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import phase_monitoring, sample_with


def do_init(module, conn):
    if ledger_exists(conn):
        return {"changed": False, "msg": "ledger present"}
    if module.check_mode:
        return {"changed": True, "msg": f"would create the ledger schema {LEDGER_SCHEMA}"}
    with open(module.params["ledger_sql"], encoding="utf-8") as handle:
        sql = handle.read()
    with transaction(conn) as cur:
        cur.execute(sql)
    return {"changed": True, "msg": f"created the ledger schema {LEDGER_SCHEMA}"}


class GateRefused(Exception):
    """A phase that must not run: drift, or a prerequisite missing."""

    def __init__(self, msg: str, result: dict) -> None:
        super().__init__(msg)
        self.result = result


def gate_one(state: dict, phase: str, requires: list[str], files_in: list[str], sql_root: str,
             checksum_params: dict, direction: str, satisfied_extra: set[str]) -> dict:
    """Whether `phase` runs, from the ledger's state: skip an applied phase whose SQL is unchanged,
    refuse drift (applied with other SQL) and a prerequisite neither applied nor in satisfied_extra."""
    files = file_checksums(files_in, sql_root)
    checksum = combined_checksum(files, checksum_params)
    applied = applied_phases(state)
    result = {"phase": phase, "checksum": checksum, "files": files, "applied": applied}
    if direction == "rollback":
        result["run"] = phase in applied
        result["reason"] = "applied" if result["run"] else "not applied"
        return result
    if phase in applied:
        recorded = state[phase].get("files") or {}
        changed = sorted(f for f in set(files) | set(recorded) if files.get(f) != recorded.get(f))
        if changed or state[phase].get("checksum") != checksum:
            what = ", ".join(sql_label(sql_root, f) for f in changed) or "its parameters"
            raise GateRefused(
                f"drift: phase {phase} was applied at {state[phase]['finished_at']} with "
                f"different SQL; changed since: {what}. Restore the applied version of "
                f"those files, or roll phase {phase} back before applying the new version.", result)
        result.update(run=False, reason=f"phase {phase} already applied at "
                                        f"{state[phase]['finished_at']}; nothing to do")
        return result
    missing = [r for r in requires if r not in set(applied) | satisfied_extra]
    # In check mode a phase may rely on earlier phases of this run that did not really run: its
    # own steps cannot be simulated against a schema that is not there yet.
    result["simulated_prerequisites"] = [r for r in requires if r not in applied]
    if missing:
        raise GateRefused(
            f"phase {phase} needs phase(s) {', '.join(missing)} applied first; run "
            f"`-e phase={missing[0]}` (or `-e phase=all`). Applied so far: "
            f"{', '.join(applied) or 'none'}.", result)
    result.update(run=True, reason=f"phase {phase} will run")
    return result


def do_gate(module, conn):
    """Every phase of a run, asked once before anything changes: a phase may rely on the phases
    listed before it (the run stops at the first one that fails). The first refusal, in phase
    order, fails the run."""
    p = module.params
    state = ledger_state(conn)
    gates: dict[str, dict] = {}
    for item in sorted(p["phases"], key=lambda i: str(i["phase"])):
        phase = str(item["phase"])
        earlier = {str(i["phase"]) for i in p["phases"] if str(i["phase"]) < phase}
        try:
            gates[phase] = gate_one(state, phase, [str(r) for r in item.get("requires") or []],
                                    item.get("files") or [], p["sql_root"], item.get("checksum_params") or {},
                                    p["direction"], earlier)
        except GateRefused as exc:
            module.fail_json(msg=str(exc), gates=gates, **exc.result)
    return {"changed": False, "gates": gates, "applied": applied_phases(state)}


def do_begin(module, conn):
    p = module.params
    if module.check_mode:
        return {"changed": True, "record_id": None, "msg": f"would record phase {p['phase']} as running"}
    with transaction(conn) as cur:
        # A run killed mid-phase leaves a 'running' record; mark it before starting again.
        cur.execute(
            f"UPDATE {LEDGER_SCHEMA}.history SET status = 'interrupted', finished_at = clock_timestamp() "
            "WHERE phase = %s AND status = 'running'", (p["phase"],))
        interrupted = cur.rowcount
        cur.execute(
            f"""INSERT INTO {LEDGER_SCHEMA}.history
                   (run_id, phase, direction, status, operator, approved_by, environment, checksum, files)
                VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s) RETURNING id""",
            (p["run_id"], p["phase"], p["direction"], p["operator"], p["approved_by"],
             p["environment"], combined_checksum(file_checksums(p["files"], p["sql_root"]),
                                                 p["checksum_params"]),
             json.dumps(file_checksums(p["files"], p["sql_root"]))))
        record_id = cur.fetchone()[0]
    return {"changed": True, "record_id": record_id, "interrupted_before": interrupted}


def do_finish(module, conn):
    p = module.params
    if module.check_mode or p["record_id"] is None:
        return {"changed": module.check_mode, "msg": "nothing recorded in check mode"}
    # The after-phase sample, in this module call rather than a pgmigrate_metrics call before it.
    sampled = sample_with(p, p["sample"]) if p["sample"] else None
    details = dict(p["details"])
    if p["monitoring"] is not None:
        details["monitoring"] = phase_monitoring(p["monitoring"], sampled)
    with transaction(conn) as cur:
        cur.execute(
            f"""UPDATE {LEDGER_SCHEMA}.history
                   SET status = %s, finished_at = clock_timestamp(), rows_affected = %s,
                       details = %s, error = %s
                 WHERE id = %s RETURNING finished_at - started_at""",
            (p["status"], p["rows_affected"], json.dumps(json_safe(details)), p["error"],
             p["record_id"]))
        duration = cur.fetchone()[0]
    result = {"changed": True, "duration_s": duration.total_seconds()}
    if sampled is not None:
        result["monitor"] = sampled
    return result


def do_status(module, conn):
    state = ledger_state(conn)
    # unfinished: phases whose latest run was killed or failed half-way (rerun the same command).
    return {"changed": False, "state": state, "applied": applied_phases(state),
            "unfinished": ledger_unfinished(conn), "ledger_exists": ledger_exists(conn)}


ACTIONS = {"init": do_init, "gate": do_gate, "begin": do_begin, "finish": do_finish,
           "status": do_status}


def main():
    spec = dict(
        action=dict(type="str", required=True, choices=list(ACTIONS)),
        phase=dict(type="str"),
        # action gate for every phase of a run at once: [{phase, requires, files, checksum_params}]
        phases=dict(type="list", elements="dict", default=[]),
        direction=dict(type="str", default="apply", choices=["apply", "rollback"]),
        files=dict(type="list", elements="path", default=[]),
        sql_root=dict(type="path"),
        checksum_params=dict(type="dict", default={}),
        ledger_sql=dict(type="path"),
        run_id=dict(type="str"),
        record_id=dict(type="int"),
        operator=dict(type="str"),
        approved_by=dict(type="str"),
        environment=dict(type="str"),
        status=dict(type="str", choices=["succeeded", "failed"]),
        rows_affected=dict(type="int"),
        details=dict(type="dict", default={}),
        error=dict(type="str"),
        sample=dict(type="dict"),
        monitoring=dict(type="dict"),
        **CONNECTION_ARGS,
        **LOCK_ARGS,
    )
    module = AnsibleModule(
        argument_spec=spec,
        supports_check_mode=True,
        required_if=[("action", "init", ["ledger_sql"]),
                     ("action", "gate", ["phases", "sql_root"]),
                     ("action", "begin", ["phase", "run_id", "operator", "environment", "sql_root"]),
                     ("action", "finish", ["status"])],
    )
    try:
        conn = connect(module.params, "pgmigrate-ledger")
        try:
            result = ACTIONS[module.params["action"]](module, conn)
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
