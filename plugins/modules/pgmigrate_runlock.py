#!/usr/bin/python
# One run at a time per database (module_utils/pgmigrate_runlock.py says how): take the run
# lock for the whole playbook run, release it at the end, or say who holds it. Never waits:
# a lock held by another run is refused at once, naming the holder.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_runlock
short_description: Hold the database's run lock for a playbook run, release it, or show its holder
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - One run at a time per database. C(acquire) starts a small holder process that keeps a
    session-level advisory lock on the database until C(release), the end of the ansible-playbook
    process, or the end of its session. Refused, changing nothing, when another run holds it; the
    message names that run (playbook, operator, run id, since when, controller). Already held by
    I(run_id) - fine.
  - C(status) only reads who holds it. In check mode C(acquire) only reads too.
  - Never waits for the lock and never reports a change (a lock is no change to the database).
options:
  action:
    description: C(acquire) the lock, C(release) it, or show its holder (C(status)).
    type: str
    required: true
    choices: [acquire, release, status]
  playbook:
    description: The playbook of this run, shown to a run that is refused.
    type: str
    default: migrate
  operator:
    description: Who runs it, shown to a run that is refused.
    type: str
    default: ""
  run_id:
    description: This run's id; a lock already held by it is no refusal.
    type: str
    default: ""
  missing_ok:
    type: bool
    default: false
    description: A database that does not exist (yet) is no error; nothing is locked.
  holder_pid:
    type: int
    default: 0
    description: The holder process C(acquire) returned (for C(release); for C(acquire), one already held).
  holder_start:
    type: str
    default: ""
    description: The holder process's start time as C(acquire) returned it (guards against pid reuse).
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Take the run lock for this playbook run
  agency.pgmigrate.pgmigrate_runlock:
    action: acquire
    playbook: migrate
    operator: "{{ lookup('ansible.builtin.env', 'USER') }}"
    run_id: "{{ run_id }}"
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: runlock

- name: Release it at the end of the run
  agency.pgmigrate.pgmigrate_runlock:
    action: release
    holder_pid: "{{ runlock.holder_pid }}"
    holder_start: "{{ runlock.holder_start }}"
    db_host: db.example.internal
    db_name: app
    db_user: migrator
"""

RETURN = r"""
taken:
  description: Whether this run holds the lock now.
  returned: action is acquire
  type: bool
holder:
  description: Who holds the lock (playbook, operator, run id, since, controller, backend pid), or null.
  returned: action is acquire or status
  type: dict
holder_pid:
  description: The holder process, to pass to C(release).
  returned: action is acquire and the lock is taken
  type: int
holder_start:
  description: The holder process's start time, to pass to C(release).
  returned: action is acquire and the lock is taken
  type: str
released:
  description: Whether a holder process was stopped.
  returned: action is release
  type: bool
msg:
  description: What the module found or did.
  returned: action is acquire or status
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    describe_target,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_runlock import (
    describe_holder,
    identity,
    ours,
    playbook_pid,
    read_holder,
    refusal,
    start_holder,
    stop_holder,
)


def current_holder(p: dict) -> dict | None:
    conn = connect(p, "pgmigrate-runlock-check")
    try:
        return read_holder(conn)
    finally:
        conn.close()


def acquire(module: AnsibleModule) -> dict:
    p = module.params
    target = describe_target(p)
    watch = playbook_pid()
    try:
        if module.check_mode:
            # A check-mode run never waits for the lock, nor takes it: it says who holds it.
            holder = current_holder(p)
            msg = f"{describe_holder(holder)} holds the run lock" if holder else "no run in progress"
            return {"changed": False, "taken": False, "holder": holder, "msg": msg}
        # Straight to the holder (one connection): it answers BUSY if another session has it.
        ident = identity(p["playbook"], p["operator"], p["run_id"], watch)
        started = start_holder(p, ident, watch)
    except MigrationError as exc:
        if p["missing_ok"] and "the database does not exist" in str(exc):
            return {"changed": False, "taken": False, "holder": None,
                    "msg": f"{target} does not exist yet: nothing to lock"}
        raise
    if started["taken"]:
        return {"changed": False, "taken": True, "holder": {**ident, "backend_pid": started["backend_pid"]},
                "holder_pid": started["holder_pid"], "holder_start": started["holder_start"],
                "msg": f"run lock on {target} held for run {p['run_id']}"}
    holder = current_holder(p) or {"backend_pid": "?"}
    if ours(holder, p["run_id"], watch):
        # Kept: the holder this run started (its pid and start came back as holder_pid and
        # holder_start), for release.
        return {"changed": False, "taken": bool(p["holder_pid"]), "holder": holder,
                "holder_pid": p["holder_pid"], "holder_start": p["holder_start"],
                "msg": "already held by this run"}
    module.fail_json(msg=refusal(holder, target), holder=holder)


def release(module: AnsibleModule) -> dict:
    p = module.params
    stopped = stop_holder(p["holder_pid"], p["holder_start"]) if p["holder_pid"] else False
    return {"changed": False, "released": stopped}


def status(module: AnsibleModule) -> dict:
    holder = current_holder(module.params)
    return {"changed": False, "holder": holder,
            "msg": f"run in progress: {describe_holder(holder)}" if holder else "no run in progress"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["acquire", "release", "status"]),
            playbook=dict(type="str", default="migrate"),
            operator=dict(type="str", default=""),
            run_id=dict(type="str", default=""),
            missing_ok=dict(type="bool", default=False),
            holder_pid=dict(type="int", default=0),
            holder_start=dict(type="str", default=""),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    actions = {"acquire": acquire, "release": release, "status": status}
    try:
        result = actions[module.params["action"]](module)
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
