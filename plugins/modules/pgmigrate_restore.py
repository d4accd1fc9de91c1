#!/usr/bin/python
# Restore a verified phase-1 backup (pg_dump archive + manifest, strategy 2.1) into a new database
# and, on request, swap it in for the live one - with the clone's mechanics (pgmigrate_dump):
# identifiers quoted, the password in a private password file, the swap in one transaction
# retried while sessions go.
#   check: read-only refusals before anything changes - an archive (the newest phase-1 backup by
#          default) with its manifest, whose sha256 matches and which pg_restore --list reads; a
#          replacement only by a backup of the live database itself; a target that does not exist;
#          a login that may create databases.
#   run:   the check, then: a new database (the live one's encoding and locale), pg_restore in one
#          transaction (a failure drops it again), the restored row counts compared with those the
#          manifest recorded, the restore recorded in the restored database's ledger, and with
#          replace the swap: the restored copy takes the live database's name, the live one is kept
#          under another.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_restore
short_description: Restore a verified phase-1 backup into a new database, optionally in place of the live one
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - The db_* options are the live database (I(db_name)) and the login; every database statement
    runs from I(maintenance_db), so the live database need not be reachable unless it is replaced.
  - C(check) runs the read-only refusals before anything changes - the archive (the newest
    C(backup_pre_migration_<db_name>_*.dump) or C(.dir) in I(backup_dir) unless I(archive) names
    one) exists with its manifest beside it, its sha256 is the manifest's (a directory-format
    archive's is that of the sha256sum listing of its files), the manifest has row counts, and
    C(pg_restore --list) reads it; with I(replace) the manifest is of I(db_name) and I(db_name)
    exists; I(target_db) does not exist; the login may create databases.
  - C(run) does the check, then creates I(target_db) with the live database's encoding and locale,
    runs pg_restore in one transaction (a failure drops I(target_db) again), compares the restored
    row counts of the manifest's tables (I(db_schema)'s, by bare name) with those recorded at backup
    time (a difference fails, and I(target_db) is kept for inspection), records the restore in the
    restored database's ledger (runs left C(running) by the backup become C(interrupted)), and with
    I(replace) swaps it in - the live database refuses new sessions, its sessions are ended, and in
    one transaction it is renamed to I(replaced_db) and I(target_db) takes its name.
  - The password reaches pg_restore only through a private password file, never its command line.
options:
  action:
    description: Only run the refusals (C(check)), or restore (C(run)).
    type: str
    default: run
    choices: [check, run]
  archive:
    description: The archive to restore; empty - the newest phase-1 backup of I(db_name) in I(backup_dir).
    type: str
    default: ""
  backup_dir:
    description: >-
      Where phase 1 writes this host's backups (C(<migration_backups>/<host>)), searched when
      I(archive) is empty.
    type: str
    default: ""
  target_db:
    description: The new database to restore into; it must not exist.
    type: str
    required: true
  replace:
    description: Swap the restored copy in for I(db_name), keeping the replaced database as I(replaced_db).
    type: bool
    default: false
  replaced_db:
    description: With I(replace), the name the replaced live database is kept under.
    type: str
    default: ""
  maintenance_db:
    description: The database CREATE, ALTER and DROP DATABASE run from (never the one being replaced).
    type: str
    default: postgres
  pg_bin_dir:
    description: >-
      The directory of pg_restore; empty - the one of the server's major version found on the
      controller.
    type: str
    default: ""
  workdir:
    description: Where the private temporary directory for the password file goes (default the system's).
    type: path
  ledger:
    description: >-
      C(run) - what the restore's ledger record in the restored database holds - C(run_id),
      C(operator), C(approved_by), C(environment).
    type: dict
    default: {}
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Restore the newest phase-1 backup into a new database
  agency.pgmigrate.pgmigrate_restore:
    backup_dir: backups/db1
    target_db: app_restored_20260101120000
    ledger: {run_id: "{{ migration_run_id }}", operator: jane, environment: staging}
    db_host: db1.example.internal
    db_name: app
    db_user: migrator
    db_password: "{{ vault_migrator_password }}"
"""

RETURN = r"""
archive:
  description: The archive checked (and restored).
  returned: always
  type: str
manifest:
  description: The archive's manifest (database, created_at, sha256, row_counts...).
  returned: always
  type: dict
target_db:
  description: The new database.
  returned: always
  type: str
pg_restore:
  description: The pg_restore used.
  returned: always
  type: str
toc_entries:
  description: The archive's table-of-contents entries (pg_restore --list).
  returned: always
  type: int
row_counts:
  description: C(run) - table (bare name) to rows in the restored copy, for every table the manifest recorded.
  returned: action is run
  type: dict
lines:
  description: C(run) - one line per table - rows restored beside rows recorded at backup time.
  returned: action is run
  type: list
  elements: str
replaced:
  description: C(run) - whether the restored copy took the live database's name.
  returned: action is run
  type: bool
seconds:
  description: C(run) - how long the restore took.
  returned: action is run
  type: float
"""

import glob
import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LEDGER_SCHEMA,
    LOCK_ARGS,
    MigrationError,
    connect,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_dump import (
    archive_sha256,
    conninfo,
    count_tables,
    create_database,
    drop_database,
    pg_program,
    private_workdir,
    restore_list_entries,
    run_tool,
    scrub,
    swap_in,
    tool_env,
    write_passfile,
)

UNCHANGED = "Nothing was changed."


# --- the check ------------------------------------------------------------------------------

def find_archive(p: dict) -> str:
    """The archive named, else the newest phase-1 backup of the database (custom format, a .dump
    file, or directory format, a .dir directory; the names hold their UTC time, so the last by
    name is the newest)."""
    if p["archive"]:
        return p["archive"]
    prefix = os.path.join(glob.escape(p["backup_dir"]), f"backup_pre_migration_{glob.escape(p['db_name'])}_*")
    found = sorted(glob.glob(prefix + ".dump") + glob.glob(prefix + ".dir"))
    if not found:
        raise MigrationError(f"No phase-1 backup of {p['db_name']} in {p['backup_dir']}: name one with "
                             "-e restore_archive=PATH (phase 1 of migrate.yml writes them, with a manifest). "
                             + UNCHANGED)
    return found[-1]


def read_manifest(path: str) -> dict:
    """The archive's manifest, once the archive is the one it describes."""
    manifest_path = f"{path}.manifest.json"
    if not os.path.exists(path):
        raise MigrationError(f"{path} does not exist: restore only a backup phase 1 wrote and verified. {UNCHANGED}")
    if not os.path.exists(manifest_path):
        raise MigrationError(f"{path} has no manifest beside it ({manifest_path}), so it cannot be verified: "
                             f"restore only a backup phase 1 wrote and verified. {UNCHANGED}")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except ValueError as exc:
        raise MigrationError(f"{manifest_path} is not JSON ({exc}): restore only a backup phase 1 wrote and "
                             f"verified. {UNCHANGED}") from None
    if not isinstance(manifest, dict):
        raise MigrationError(f"{manifest_path} is not a backup manifest. {UNCHANGED}")
    sha256, _files = archive_sha256(path)
    if sha256 != manifest.get("sha256") or not manifest.get("row_counts"):
        raise MigrationError(
            f"{path} does not match its manifest (sha256 {sha256}, the manifest says "
            f"{manifest.get('sha256') or 'nothing'}{'' if manifest.get('row_counts') else '; no row counts'}): it "
            f"was changed or truncated since phase 1 wrote it. Use another backup. {UNCHANGED}")
    return manifest


def admin_connection(p: dict):
    conn = connect({**p, "db_name": p["maintenance_db"]}, "pgmigrate-restore")
    conn.autocommit = True
    return conn


def read_server(p: dict) -> dict:
    """The target's existence, the live database's pg_database row, whether the login may create
    databases, and the server's version - read from the maintenance database."""
    conn = admin_connection(p)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT (SELECT count(*) FROM pg_database WHERE datname = %(target)s) > 0,
                                  (SELECT to_jsonb(d) || jsonb_build_object('encoding_name',
                                                                            pg_encoding_to_char(d.encoding))
                                     FROM pg_database d WHERE d.datname = %(live)s),
                                  (SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user),
                                  current_setting('server_version_num')::int""",
                        {"target": p["target_db"], "live": p["db_name"]})
            target_exists, live, can_create, version_num = cur.fetchone()
    finally:
        conn.close()
    return {"target_exists": target_exists, "live": live, "can_create": bool(can_create),
            "server_version_num": version_num}


def check(p: dict, secrets: list[str]) -> dict:
    if p["replace"] and not p["replaced_db"]:
        raise MigrationError(f"replace needs replaced_db, the name the live database is kept under. {UNCHANGED}")
    path = find_archive(p)
    manifest = read_manifest(path)
    if p["replace"] and manifest.get("database") != p["db_name"]:
        raise MigrationError(f"{path} is a backup of {manifest.get('database')}, not of {p['db_name']}: it cannot "
                             f"replace it. {UNCHANGED}")
    server = read_server(p)
    # Without restore_pg_bin_dir: the controller's pg_restore of the server's major version.
    pg_restore = pg_program("pg_restore", p["pg_bin_dir"], server["server_version_num"] // 10000)
    with private_workdir(p["workdir"], prefix="pgmigrate-restore-") as work:
        try:
            entries = restore_list_entries(pg_restore, path, tool_env(write_passfile(work, [])), secrets)
        except MigrationError as exc:
            raise MigrationError(f"{exc}. {UNCHANGED}") from None
    if entries == 0:
        raise MigrationError(f"pg_restore --list found no entries in {path}: the backup is not usable. {UNCHANGED}")
    if server["target_exists"]:
        raise MigrationError(
            f"Database {p['target_db']} exists: a restore goes into a new database (name another with -e "
            f"restore_db=NAME; to replace the live database use -e restore_replace=true -e "
            f"restore_confirm={p['db_name']}). {UNCHANGED}")
    if not server["can_create"]:
        raise MigrationError(f"{p['db_user']} may not create databases (CREATEDB). {UNCHANGED}")
    if p["replace"] and server["live"] is None:
        raise MigrationError(f"There is no database {p['db_name']} to replace: restore without restore_replace. "
                             + UNCHANGED)
    return {"archive": path, "manifest": manifest, "pg_restore": pg_restore, "toc_entries": entries,
            "server": server}


# --- the run --------------------------------------------------------------------------------

def restore(p: dict, plan: dict, secrets: list[str]) -> None:
    """pg_restore into the new database, in one transaction; a failure drops it again."""
    live = plan["server"]["live"]
    with private_workdir(p["workdir"], prefix="pgmigrate-restore-") as work:
        env = tool_env(write_passfile(work, [p]))
        admin = admin_connection(p)
        try:
            with admin.cursor() as cur:
                # Like the live database (its encoding and locale); without one, the server's defaults.
                create_database(cur, p["target_db"], live, (live or {}).get("encoding_name"), True,
                                plan["server"]["server_version_num"],
                                "create the database by hand and restore with pg_restore")
            target = conninfo({**p, "db_name": p["target_db"]}, application_name="pgmigrate-restore")
            try:
                run_tool([plan["pg_restore"], "--single-transaction", "--exit-on-error", "--no-password",
                          f"--dbname={target}", plan["archive"]], env, "pg_restore", secrets)
            except BaseException as exc:
                with admin.cursor() as cur:
                    drop_database(cur, p["target_db"])
                if isinstance(exc, MigrationError):
                    raise MigrationError(f"{exc}. The target database was dropped; the live database was not "
                                         "touched.") from None
                raise
        finally:
            admin.close()


def verify_and_record(p: dict, plan: dict) -> dict:
    """The restored rows of every table the manifest recorded (the migrated schema's, by bare
    name), compared; then the restore's ledger record, in the same transaction."""
    recorded = plan["manifest"]["row_counts"]
    schema = p["db_schema"] or "public"
    conn = connect({**p, "db_name": p["target_db"]}, "pgmigrate-restore-verify")
    try:
        with conn.cursor() as cur:
            found = count_tables(cur, [f"{schema}.{t}" for t in sorted(recorded)])
            restored = {t: found[f"{schema}.{t}"] for t in sorted(recorded)}
            lines = {t: f"{t}: {restored[t]} rows restored, {recorded[t]} recorded at backup time"
                     if restored[t] is not None else f"{t}: no such table restored, {recorded[t]} rows recorded "
                     "at backup time" for t in sorted(recorded)}
            mismatch = [lines[t] for t in sorted(recorded) if restored[t] != int(recorded[t])]
            if mismatch:
                raise MigrationError(
                    f"The restored copy {p['target_db']} has other row counts than recorded at backup time: "
                    f"{'; '.join(mismatch)}. (The counts are taken just before the dump: rows written in between "
                    f"explain a small difference.) {p['target_db']} is kept for inspection"
                    f"{'; the live database was not replaced' if p['replace'] else ''}.")
            record(cur, p, plan, restored)
        conn.commit()
    finally:
        conn.close()
    return {"row_counts": restored, "lines": list(lines.values())}


def record(cur, p: dict, plan: dict, restored: dict) -> None:
    """The restore in the restored database's ledger (when it has one): a run the backup caught
    running never finishes there, so it is marked interrupted."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
    if not cur.fetchone()[0]:
        return
    ledger, manifest = p["ledger"], plan["manifest"]
    cur.execute(f"""UPDATE {LEDGER_SCHEMA}.history
                       SET status = 'interrupted', finished_at = clock_timestamp(),
                           error = 'in progress when the backup was taken; this database was restored from it'
                     WHERE status = 'running'""")
    details = {"archive": plan["archive"], "sha256": manifest.get("sha256"),
               "backup_created_at": manifest.get("created_at") or "", "source_database": manifest.get("database") or "",
               "row_counts": restored, "replaces": p["db_name"] if p["replace"] else ""}
    cur.execute(f"""INSERT INTO {LEDGER_SCHEMA}.history
                           (run_id, phase, direction, status, operator, approved_by, environment, finished_at,
                            details)
                    VALUES (%s, 'restore', 'apply', 'succeeded', %s, %s, %s, clock_timestamp(), %s::jsonb)""",
                (ledger.get("run_id"), ledger.get("operator"), ledger.get("approved_by") or "",
                 ledger.get("environment"), json.dumps(details)))


def replace(p: dict) -> None:
    """The restored copy takes the live database's name; the live one is kept as replaced_db."""
    admin = admin_connection(p)
    try:
        with admin.cursor() as cur:
            swap_in(cur, p["target_db"], p["db_name"], p["replaced_db"], close=True)
    except MigrationError as exc:
        raise MigrationError(f"Could not swap {p['target_db']} in for {p['db_name']}: {exc}. The live database is "
                             f"unchanged and open again; the restored copy stays as {p['target_db']}.") from None
    finally:
        admin.close()


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="run", choices=["check", "run"]),
            archive=dict(type="str", default=""),
            backup_dir=dict(type="str", default=""),
            target_db=dict(type="str", required=True),
            replace=dict(type="bool", default=False),
            replaced_db=dict(type="str", default=""),
            maintenance_db=dict(type="str", default="postgres"),
            pg_bin_dir=dict(type="str", default=""),
            workdir=dict(type="path"),
            ledger=dict(type="dict", default={}),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    secrets = [str(p.get("db_password") or "")]
    try:
        plan = check(p, secrets)
        summary = {k: plan[k] for k in ("archive", "manifest", "pg_restore", "toc_entries")}
        summary["target_db"] = p["target_db"]
        if p["action"] == "check" or module.check_mode:
            module.exit_json(changed=p["action"] == "run", **summary)
        started = time.monotonic()
        restore(p, plan, secrets)
        result = verify_and_record(p, plan)
        if p["replace"]:
            replace(p)
    except MigrationError as exc:
        module.fail_json(msg=scrub(str(exc), secrets))
    except Exception as exc:  # noqa: BLE001 - psycopg2 and OS errors, secrets taken out
        module.fail_json(msg=f"the restore into {p['target_db']} failed: {scrub(str(exc).strip(), secrets)}")
    module.exit_json(changed=True, **summary, **result, replaced=p["replace"],
                     seconds=round(time.monotonic() - started, 2))


if __name__ == "__main__":
    main()
