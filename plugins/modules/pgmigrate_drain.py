#!/usr/bin/python
# What drains the transition's queue between phase 3 and complete.yml (module_utils/
# pgmigrate_drain.py says how): start it (a pg_cron job in the database, or a worker process on
# the controller), stop it, or say what drains it and how far behind it is.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_drain
short_description: Start, stop or show what drains the transition's queue (pg_cron job or worker)
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - From phase 3 until C(complete.yml), the sync defers what an installation or a listing change
    derives in other rows into C(migration_ledger.transition_queue). Something must apply it all
    the time; this module starts, stops or shows it.
  - C(started) with I(method=pg_cron) (or C(auto) where the database has the pg_cron extension)
    schedules the job C(pgmigrate_transition_drain) once (a rerun leaves it), recorded in
    C(migration_ledger.created_objects) so C(complete.yml) and every rollback unschedule it.
    With I(method=worker) (C(auto) without pg_cron) it writes the worker's configuration (mode
    0600, as it holds the password) and starts a detached worker process on the controller,
    unless one (of any controller) already holds the database's drain lock.
  - C(stopped) unschedules the job, drops its procedure, stops this controller's worker and
    removes its configuration. With I(only_when_closed) it does nothing while the transition is
    still open (what a rollback that kept phase 3 needs).
  - C(status) only reads. Check mode reads and says what would change.
options:
  state:
    description: C(started), C(stopped) or C(status).
    type: str
    required: true
    choices: [started, stopped, status]
  method:
    description: >-
      What drains - C(auto) (pg_cron where the database has it, else the worker), C(pg_cron),
      C(worker), or C(none) (nothing: the queue grows until somebody drains it).
    type: str
    default: auto
    choices: [auto, pg_cron, worker, none]
  state_dir:
    description: The controller's directory for the worker's configuration, state (heartbeat) and log (created 0700).
    type: path
    required: true
  host:
    description: >-
      The inventory host; with a digest of I(db_host), I(db_port) and I(db_name) it names the worker's
      files in I(state_dir) and its supervisor (C(name)).
    type: str
    required: true
  python:
    description: The Python that runs the worker (one with psycopg2); default - the one running this module.
    type: str
    default: ""
  collections_path:
    description: A directory holding C(ansible_collections/agency/pgmigrate), for the worker's PYTHONPATH.
    type: path
    default: ""
  batch:
    description: Queue entries applied per call (per transaction).
    type: int
    default: 500
  idle_ms:
    description: The pause after a call that emptied the queue (worker and pg_cron job alike).
    type: int
    default: 100
  throttle:
    description: The worker's throttle options (the migration's, C(migration_throttle_*)).
    type: dict
    default: {}
  cron_sql:
    description: >-
      The pg_cron job's procedure (C(files/sql/transition/drain_cron.sql)); needed when
      I(state=started) schedules the job.
    type: path
    default: ""
  only_when_closed:
    description: With C(stopped) - do nothing while the transition is open.
    type: bool
    default: false
extends_documentation_fragment:
  - agency.pgmigrate.connection
"""

EXAMPLES = r"""
- name: Start what drains the queue (pg_cron if present, else a worker)
  agency.pgmigrate.pgmigrate_drain:
    state: started
    state_dir: "{{ lookup('ansible.builtin.env', 'HOME') }}/.pgmigrate/drain"
    host: "{{ inventory_hostname }}"
    db_host: db.example.internal
    db_name: app
    db_user: migrator
    db_password: "{{ vault_migration_db_password }}"
  register: drain_result
"""

RETURN = r"""
method:
  description: What drains (or would) - C(pg_cron), C(worker), C(none).
  returned: always
  type: str
queue:
  description: >-
    The queue and what drains it (C(present), C(open), C(depth), C(oldest_enqueued_at),
    C(oldest_age_s), C(drained_by), C(says)).
  returned: always
  type: dict
worker:
  description: This controller's worker as its state file says (C(pid), C(alive), C(heartbeat_at), C(applied), ...).
  returned: always
  type: dict
cron_job:
  description: The pg_cron job scheduled, or found (C(jobid), C(schedule), C(command), C(version)).
  returned: when I(method) is pg_cron
  type: dict
supervise:
  description: >-
    Whether the worker's supervisor (the cron entry running C(files.supervise)) should be in place - the
    worker drains (I(state=started)) and the transition is open.
  returned: always
  type: bool
name:
  description: >-
    The worker's name on this controller - I(host), a dash and 8 hex digits of the database's address - which
    names its files and its supervisor's cron entry.
  returned: always
  type: str
  sample: db1-3f9a2c41
files:
  description: The worker's configuration, state and log paths; and the supervisor's command (for the cron entry).
  returned: always
  type: dict
msg:
  description: What was done, or would be, in one line.
  returned: always
  type: str
"""

import hashlib
import json
import os
import shlex
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    MigrationError,
    connect,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_drain import (
    ENTRY,
    cron_schedule,
    cron_unschedule,
    ensure,
    pg_cron_version,
    process_alive,
    queue_state,
    read_state,
    stop,
    write_private,
)

CONNECTION_KEYS = ("db_host", "db_port", "db_name", "db_user", "db_password", "db_sslmode", "connect_timeout")


def worker_name(p: dict) -> str:
    """The worker's name on this controller: the inventory host and its database, so that two
    inventories naming different databases alike (staging's and production's db1) never share a
    configuration, a heartbeat or a cron entry."""
    where = f"{p['db_host']}:{p['db_port']}/{p['db_name']}"
    return f"{p['host']}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def files(p: dict) -> dict:
    base = os.path.join(p["state_dir"], worker_name(p))
    out = {"config": base + ".json", "state": base + ".state.json", "log": base + ".log"}
    python = p["python"] or sys.executable
    path = f"PYTHONPATH={shlex.quote(p['collections_path'])} " if p["collections_path"] else ""
    # The supervisor's command: no password on it; the configuration file holds it (0600).
    out["supervise"] = (f"{path}{shlex.quote(python)} -m {ENTRY} ensure {shlex.quote(out['config'])} "
                        f">> {shlex.quote(out['log'])} 2>&1")
    return out


def same_database(config: str, p: dict) -> bool:
    """Whether a worker's configuration file names this database."""
    try:
        with open(config, encoding="utf-8") as handle:
            seen = json.load(handle).get("connection", {})
    except (OSError, ValueError):
        return False
    return all(str(seen.get(k, "")) == str(p.get(k) or "") for k in ("db_host", "db_port", "db_name"))


def worker_state(paths: dict) -> dict:
    seen = read_state(paths["state"])
    if seen.get("pid"):
        seen["alive"] = process_alive(int(seen["pid"]), paths["config"])
    return seen


def config_text(p: dict, paths: dict) -> str:
    cfg = {"connection": {k: p[k] for k in CONNECTION_KEYS if p.get(k) not in (None, "")},
           "options": {"batch": p["batch"], "idle_ms": p["idle_ms"]},
           "throttle": p["throttle"], "state_file": paths["state"], "log_file": paths["log"],
           "python": p["python"] or sys.executable, "collections_path": p["collections_path"]}
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["started", "stopped", "status"]),
            method=dict(type="str", default="auto", choices=["auto", "pg_cron", "worker", "none"]),
            state_dir=dict(type="path", required=True),
            host=dict(type="str", required=True),
            python=dict(type="str", default=""),
            collections_path=dict(type="path", default=""),
            batch=dict(type="int", default=500),
            idle_ms=dict(type="int", default=100),
            throttle=dict(type="dict", default={}),
            only_when_closed=dict(type="bool", default=False),
            cron_sql=dict(type="path", default=""),
            **CONNECTION_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["batch"] < 1 or p["idle_ms"] < 10:
        module.fail_json(msg="drain_batch must be at least 1 and drain_idle_ms at least 10; nothing was changed")
    try:
        module.exit_json(**run(module))
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot write under {p['state_dir']}: {exc.strerror or exc} (check drain_state_dir)")


def run(module: AnsibleModule) -> dict:
    p, check = module.params, module.check_mode
    paths = files(p)
    conn = connect(p, "pgmigrate-drain-control")
    try:
        state = queue_state(conn)
        with conn.cursor() as cur:
            cron_version = pg_cron_version(cur)
        conn.rollback()
        method = p["method"]
        if method == "auto":
            method = "pg_cron" if cron_version else "worker"
        elif method == "pg_cron" and not cron_version:
            raise MigrationError("drain_method is pg_cron but the pg_cron extension is not installed in this "
                                 "database (CREATE EXTENSION pg_cron where cron.database_name points, or "
                                 "drain_method: worker); nothing was changed")
        result: dict = {"changed": False, "method": method, "queue": state, "files": paths, "name": worker_name(p)}
        if p["state"] == "status":
            result["msg"] = state["says"]
        elif p["state"] == "started":
            result.update(start(module, conn, state, method, paths, check))
        else:
            result.update(halt(module, conn, state, paths, check))
    finally:
        conn.close()
    result["worker"] = worker_state(paths)
    result["supervise"] = bool(p["state"] == "started" and result["method"] == "worker"
                               and state["open"] and state["present"])
    if p["state"] != "status" and not check and result["changed"]:
        conn = connect(p, "pgmigrate-drain-control")
        try:
            result["queue"] = queue_state(conn)
        finally:
            conn.close()
    return result


def start(module: AnsibleModule, conn, state: dict, method: str, paths: dict, check: bool) -> dict:
    p = module.params
    if method == "none":
        return {"msg": "drain_method none: nothing drains the queue; it grows until complete.yml or a "
                       "rollback drains it (" + state["says"] + ")"}
    if not state["present"] or not state["open"]:
        return {"msg": f"nothing to drain yet: no open transition with a queue; phase 3 starts the {method}"}
    if method == "pg_cron":
        if not p["cron_sql"]:
            raise MigrationError("cron_sql (files/sql/transition/drain_cron.sql) is needed to schedule the "
                                 "pg_cron job; nothing was changed")
        with open(p["cron_sql"], encoding="utf-8") as handle:
            job = cron_schedule(conn, p["batch"], p["idle_ms"], check, handle.read())
        verb = ("would schedule" if check else "scheduled") if job["changed"] else "already scheduled:"
        return {"changed": job["changed"], "cron_job": job,
                "msg": f"{verb} pg_cron job {CRON_NAME} ({job['schedule']}) calling {job['command']}"}
    text = config_text(p, paths)
    try:
        with open(paths["config"], encoding="utf-8") as handle:
            same = handle.read() == text
    except OSError:
        same = False
    changed = not same
    if state["drained_by"]["kind"] != "nothing":
        if not check and not same:
            write_private(paths["config"], text)
        return {"changed": changed, "msg": f"already drained: {state['says']}"}
    if check:
        return {"changed": True, "msg": "would start a drain worker on this controller "
                                        f"(configuration {paths['config']}, log {paths['log']})"}
    if not same:
        write_private(paths["config"], text)
    outcome = ensure(paths["config"])
    return {"changed": changed or outcome["changed"], "msg": outcome["msg"]}


def halt(module: AnsibleModule, conn, state: dict, paths: dict, check: bool) -> dict:
    p = module.params
    if p["only_when_closed"] and state["open"]:
        return {"msg": "the transition is still open: what drains it keeps running"}
    job = cron_unschedule(conn, check)
    worker = stop(paths["config"], paths["state"], check)
    removed = os.path.exists(paths["config"])
    if removed and not check:
        os.remove(paths["config"])  # it holds the password
    said = []
    # A worker started before its files were named by their database too (<host>.json): stopped
    # and its configuration removed when it drains this database.
    legacy = os.path.join(p["state_dir"], p["host"])
    if same_database(legacy + ".json", p):
        old = stop(legacy + ".json", legacy + ".state.json", check)
        if not check:
            os.remove(legacy + ".json")
        said.append(f"{'would stop' if check else 'stopped'} the worker of an earlier version "
                    f"({legacy}.json): {old['msg']}")
        removed = True
    if job["changed"]:
        said.append(f"{'would unschedule' if check else 'unscheduled'} the pg_cron job "
                    f"{job['jobid'] if job['jobid'] is not None else ''} and dropped its procedure".replace("  ", " "))
    if worker["changed"]:
        said.append(worker["msg"])
    if removed:
        said.append(f"{'would remove' if check else 'removed'} the worker's configuration {paths['config']}")
    return {"changed": bool(job["changed"] or worker["changed"] or removed),
            "msg": "; ".join(said) or "nothing drains the queue from here (no pg_cron job, no worker here)"}


CRON_NAME = "pgmigrate_transition_drain"

if __name__ == "__main__":
    main()
