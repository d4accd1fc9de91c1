#!/usr/bin/python
# Reach the database and say what it is before anything changes: reachable, credentials right,
# writable (not a standby, not default_transaction_read_only), which server version; with
# ledger=true also what the ledger says (pgmigrate_ledger's status), in the same module call.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_info
short_description: Check that the target database is reachable and writable
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - Reaches the database and says what it is before anything changes - reachable, credentials
    right, writable (not a standby, not C(default_transaction_read_only)), which server version.
  - Never changes anything. Fails with a message naming the fix when the database cannot be
    reached, the credentials are wrong, or it is read-only and I(require_writable) is true.
options:
  require_writable:
    description: >-
      Fail when the database is read-only (a standby in recovery, or
      C(default_transaction_read_only) on).
    type: bool
    default: true
  min_server_version:
    description: The oldest server accepted, as C(server_version_num) (C(130000) is PostgreSQL 13).
    type: int
    default: 130000
  ledger:
    type: bool
    default: false
    description: Also return C(ledger) - what M(agency.pgmigrate.pgmigrate_ledger) C(action=status) returns.
  status:
    type: bool
    default: false
    description:
      - "Also return C(deferred), the transition's deferred work (what
        C(migration_ledger.transition_queue_state()) returns where the ledger has it; else
        C(available: false) and its fields null), and C(ledger_size), the space the ledger's tables
        hold - what C(playbooks/status.yml) reports."
  programs:
    type: list
    elements: str
    default: []
    description:
      - "Also return C(programs): the path of each named PostgreSQL client program (pg_dump,
        pg_restore) of the server's major version on the controller, from I(pg_bin_dir) when
        given."
  pg_bin_dir:
    description: A directory to take the client programs of I(programs) from; empty - search the usual places.
    type: str
    default: ""
  queue:
    type: bool
    default: false
    description: >-
      Also return C(transition_queue) - the transition's queue (its depth, the age of its oldest
      entry) and what drains it (the pg_cron job, or the worker's session and heartbeat).
  refuse_pooler:
    type: bool
    default: true
    description: >-
      Refuse a connection through a transaction- or statement-mode pooler (PgBouncer); a
      session-mode pool is accepted.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Check the target before anything changes
  agency.pgmigrate.pgmigrate_info:
    db_host: db.example.internal
    db_name: app
    db_user: migrator
    db_password: "{{ vault_migration_db_password }}"
    ledger: true
    programs: [pg_dump, pg_restore]
  register: target
"""

RETURN = r"""
server_version_num:
  description: The server's C(server_version_num).
  returned: success
  type: int
  sample: 160002
server_version:
  description: The server's version string.
  returned: success
  type: str
  sample: "16.2"
in_recovery:
  description: Whether the server is a standby in recovery.
  returned: success
  type: bool
read_only:
  description: Whether the database refuses writes (in recovery, or read-only by default).
  returned: success
  type: bool
current_user:
  description: The login connected.
  returned: success
  type: str
is_superuser:
  description: Whether that login is a superuser.
  returned: success
  type: bool
schema:
  description: The login's current schema.
  returned: success
  type: str
can_create_schema:
  description: Whether the login may create schemas in the database.
  returned: success
  type: bool
database_size_bytes:
  description: The database's size.
  returned: success
  type: int
programs:
  description: The path of each program of I(programs).
  returned: when I(programs) is not empty
  type: dict
  sample: {pg_dump: /usr/lib/postgresql/16/bin/pg_dump}
ledger:
  description: The ledger's status (C(state), C(applied), C(unfinished), C(ledger_exists)).
  returned: when I(ledger) is true
  type: dict
deferred:
  description: >-
    The transition's deferred work - C(available), C(depth), C(oldest_age_s), C(drained_by) and
    whatever else C(migration_ledger.transition_queue_state()) returns.
  returned: when I(status) is true
  type: dict
applied:
  description: The phases applied, in order.
  returned: when I(status) is true
  type: list
  elements: str
  sample: ["1", "2", "3"]
phases:
  description: >-
    Each phase the ledger knows - C(state) (C(applied), C(rolled back), C(never applied)),
    C(finished_at), C(operator), C(approved_by), C(run_id), C(rows_affected), C(duration_s) of its
    last success, and C(unfinished), a later run that did not finish (or null).
  returned: when I(status) is true
  type: dict
ledger_size:
  description: >-
    C(bytes), the ledger's tables' total size (pg_total_relation_size), and C(tables), each
    table's, largest first (null - a table locked by a concurrent drop, not waited for).
  returned: when I(status) is true
  type: dict
  sample: {bytes: 1589248, tables: {phase3_override_plan: 1048576, history: 65536}}
transition_queue:
  description: >-
    The transition's queue - C(present), C(open) (the transition), C(depth), C(oldest_enqueued_at),
    C(oldest_age_s), C(drained_by) (C(kind) pg_cron, worker or nothing, with the job's id and
    schedule and last run, or the worker's server pid, application_name, heartbeat_at and
    heartbeat_age_s) and C(says), one line.
  returned: when I(queue) is true
  type: dict
  sample: {present: true, open: true, depth: 0, oldest_age_s: 0.0, drained_by: {kind: worker}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    applied_phases,
    connect,
    describe_target,
    ledger_exists,
    ledger_size,
    ledger_state,
    ledger_unfinished,
    refuse_transaction_pooler,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain import queue_read
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_dump import pg_program


def inspect(conn) -> dict:
    with conn.cursor() as cur:
        cur.execute(
            """SELECT current_setting('server_version_num')::int,
                      current_setting('server_version'),
                      pg_is_in_recovery(),
                      current_setting('default_transaction_read_only') = 'on',
                      current_setting('transaction_read_only') = 'on',
                      current_user,
                      (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                      current_schema(),
                      has_database_privilege(current_database(), 'CREATE'),
                      pg_database_size(current_database())""")
        (version_num, version, recovery, default_ro, tx_ro, user, superuser, schema,
         can_create, size) = cur.fetchone()
    conn.rollback()
    return {"server_version_num": version_num, "server_version": version,
            "in_recovery": recovery, "read_only": bool(recovery or default_ro or tx_ro),
            "current_user": user, "is_superuser": superuser, "schema": schema,
            "can_create_schema": can_create, "database_size_bytes": size}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            require_writable=dict(type="bool", default=True),
            min_server_version=dict(type="int", default=130000),
            ledger=dict(type="bool", default=False),
            status=dict(type="bool", default=False),
            programs=dict(type="list", elements="str", default=[]),
            pg_bin_dir=dict(type="str", default=""),
            refuse_pooler=dict(type="bool", default=True),
            queue=dict(type="bool", default=False),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        conn = connect(p, "pgmigrate-info")
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    try:
        if p["refuse_pooler"]:
            refuse_transaction_pooler(conn, p)
        facts = inspect(conn)
        refusal = refuse(p, facts)
        if refusal:
            module.fail_json(msg=refusal, **facts)
        if p["programs"]:
            facts["programs"] = {name: pg_program(name, p["pg_bin_dir"], facts["server_version_num"] // 10000)
                                 for name in p["programs"]}
        if p["ledger"]:
            # What pgmigrate_ledger's status returns: one module call instead of two.
            state = ledger_state(conn)
            facts["ledger"] = {"changed": False, "state": state, "applied": applied_phases(state),
                               "unfinished": ledger_unfinished(conn), "ledger_exists": ledger_exists(conn)}
        if p["status"] or p["queue"]:
            # The queue read once (module_utils/pgmigrate_drain.queue_read): status's `deferred`
            # and the queue's state, what drains it included, are two views of it.
            queue, deferred = queue_read(conn)
        if p["status"]:
            state = ledger_state(conn)
            facts["applied"] = applied_phases(state)
            facts["phases"] = phase_states(state, ledger_unfinished(conn))
            facts["deferred"] = deferred
            facts["ledger_size"] = ledger_size(conn)
        if p["queue"]:
            facts["transition_queue"] = queue
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    finally:
        conn.close()
    module.exit_json(changed=False, **facts)


def phase_states(state: dict, unfinished: dict) -> dict:
    """Each phase the ledger knows, as status.yml's JSON gives it: `applied` or `rolled back` (its
    last success), with `unfinished` naming a later run that did not finish (failed, running,
    interrupted)."""
    out: dict = {}
    for phase, row in sorted(state.items()):
        out[phase] = {"state": "applied" if row["direction"] == "apply" else "rolled back",
                      "finished_at": row["finished_at"], "operator": row["operator"],
                      "approved_by": row["approved_by"], "run_id": row["run_id"],
                      "rows_affected": row["rows_affected"],
                      "duration_s": float(row["duration_s"]) if row["duration_s"] is not None else None,
                      "unfinished": None}
    for phase, row in sorted(unfinished.items()):
        entry = out.setdefault(phase, {"state": "never applied", "finished_at": None, "operator": None,
                                       "approved_by": None, "run_id": None, "rows_affected": None,
                                       "duration_s": None})
        entry["unfinished"] = {k: row[k] for k in (
            "direction", "status", "started_at", "operator", "run_id", "error")}
    return out


def refuse(p: dict, facts: dict) -> str | None:
    """Why this database cannot be migrated, or None."""
    target = describe_target(p)
    if p["require_writable"] and facts["read_only"]:
        why = "it is a standby in recovery" if facts["in_recovery"] else \
            "default_transaction_read_only is on"
        return (f"{target} is read-only ({why}); point migration_db_host at the "
                "primary, or clear default_transaction_read_only")
    if facts["server_version_num"] < p["min_server_version"]:
        return (f"{target} runs PostgreSQL {facts['server_version']}; this migration "
                f"needs {p['min_server_version'] // 10000} or newer (gen_random_uuid in core)")
    return None


if __name__ == "__main__":
    main()
