#!/usr/bin/python
# A verified backup (strategy 2.1), and the retention of old ones.
#   dump:  pg_dump (custom format, or directory format with parallel jobs) from a snapshot this
#          module exports and holds open, so the per-table row counts of the manifest are exact
#          and taken in the very snapshot the archive holds; pg_restore --list; size and sha256;
#          on request a full test restore into a scratch database, its row counts compared with
#          the manifest's; the manifest (JSON, mode 0600) beside the archive.
#   prune: remove old archives (and their manifests) beyond the retention, never the protected
#          ones (the archive the ledger's phase 1 record names, which a restore reads).
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_backup
short_description: Verified pg_dump backups with exact row counts, and their retention
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - C(dump) runs pg_dump (custom format, or directory format with parallel jobs) from a snapshot
    the module exports and holds open, so the per-table row counts of the manifest are exact and
    taken in the very snapshot the archive holds; then pg_restore C(--list), size and sha256, on
    request a full test restore into a scratch database (its row counts compared with the
    manifest's), and the manifest (JSON) beside the archive.
  - C(prune) removes old archives (and their manifests) beyond the retention, never the protected
    ones (the archive the ledger's phase 1 record names, which a restore reads).
  - The password reaches pg_dump and pg_restore only through a private password file (mode 0600,
    in a directory only the owner can enter, removed afterwards); it is never in argv or output.
  - Archives, directories and manifests are created readable by their owner only (umask 077).
  - Check mode dumps and removes nothing and reports what it would do.
options:
  action:
    description: Dump a backup, or prune old ones.
    type: str
    default: dump
    choices: [dump, prune]
  path:
    type: path
    description: C(dump) - the archive to write (a file, or a directory for C(format=directory)).
  format:
    description: C(dump) - pg_dump's format.
    type: str
    default: custom
    choices: [custom, directory]
  jobs:
    type: int
    default: 1
    description: C(dump) - parallel pg_dump and pg_restore jobs (directory format).
  compress:
    type: str
    default: ""
    description: C(dump) - pg_dump C(--compress); empty - pg_dump's default.
  lock_wait_timeout:
    description: C(dump) - pg_dump's C(--lock-wait-timeout) (a PostgreSQL interval).
    type: str
    default: 30s
  pg_bin_dir:
    description: >-
      The directory of pg_dump and pg_restore; empty - those of the server's major version found on
      the controller.
    type: str
    default: ""
  row_counts:
    description: C(dump) - count every table's rows exactly, in the dump's snapshot, into the manifest.
    type: bool
    default: true
  verify_restore:
    description: >-
      C(dump) - restore the archive into a scratch database and compare its row counts with the
      manifest's (needs I(row_counts)).
    type: bool
    default: false
  verify_server:
    type: dict
    description:
      - C(dump) - C(db_host), C(db_port), C(db_user), C(db_password), C(db_sslmode) of the server
        holding the scratch database (default - the source's server). Its C(db_password) is kept
        out of logs and results.
  maintenance_db:
    description: The database connected to on the verify server to create and drop the scratch database.
    type: str
    default: postgres
  manifest_extra:
    description: C(dump) - fields added to the manifest (host, environment).
    type: dict
    default: {}
  dir:
    type: path
    description: C(prune) - the directory of archives.
  prefix:
    type: str
    description: C(prune) - archives are C(<prefix>*.dump) files and C(<prefix>*.dir) directories.
  keep_count:
    description: C(prune) - keep the newest this many archives; C(0) - no count rule.
    type: int
    default: 0
  keep_days:
    description: >-
      C(prune) - keep archives younger than this many days; C(0) - no age rule. With both rules off
      nothing is removed.
    type: float
    default: 0
  protect:
    description: C(prune) - archives never removed, whatever the rules.
    type: list
    elements: path
    default: []
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Dump a verified backup before the migration
  agency.pgmigrate.pgmigrate_backup:
    action: dump
    path: backups/db1/backup_pre_migration_app_20260101_120000.dump
    verify_restore: true
    manifest_extra: {host: db1, environment: staging}
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: backup_result

- name: Keep the newest three backups and the one phase 1 recorded
  agency.pgmigrate.pgmigrate_backup:
    action: prune
    dir: backups/db1
    prefix: backup_pre_migration_app_
    keep_count: 3
    protect: ["{{ backup_result.path }}"]
    db_host: db.example.internal
    db_name: app
    db_user: migrator
"""

RETURN = r"""
path:
  description: C(dump) - the archive written (or that would be written, in check mode).
  returned: action is dump
  type: str
sha256:
  description: C(dump) - the archive's sha256 (of its files, for the directory format).
  returned: action is dump and not in check mode
  type: str
size_bytes:
  description: C(dump) - the archive's size.
  returned: action is dump and not in check mode
  type: int
backup:
  description: C(dump) - the manifest (source, row counts, pg_dump version, verification, timings).
  returned: action is dump and not in check mode
  type: dict
removed:
  description: C(prune) - the archives removed (that would be removed, in check mode).
  returned: action is prune
  type: list
  elements: str
kept:
  description: C(prune) - the archives kept.
  returned: action is prune
  type: list
  elements: str
"""

import datetime
import json
import os
import time
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    describe_target,
    quote_ident,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_dump import (
    Snapshot,
    archive_sha256,
    archive_size,
    compare_counts,
    conninfo,
    count_rows,
    dump_beside,
    first_lines,
    pg_program,
    private_workdir,
    program_major,
    program_version,
    public_counts,
    remove_archive,
    require_dump_version,
    restore_list_entries,
    run_tool,
    scrub,
    tool_env,
    write_passfile,
)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_path(path: str) -> str:
    """The archive path, or the same with _2, _3... when a backup of the same second exists."""
    if not os.path.lexists(path):
        return path
    stem, ext = os.path.splitext(path)
    n = 2
    while os.path.lexists(f"{stem}_{n}{ext}"):
        n += 1
    return f"{stem}_{n}{ext}"


def dump_argv(pg_dump: str, p: dict, path: str, snapshot: str) -> list[str]:
    argv = [pg_dump, f"--format={p['format']}", "--blobs", "--no-password",
            f"--lock-wait-timeout={p['lock_wait_timeout']}", f"--snapshot={snapshot}",
            f"--file={path}", f"--dbname={conninfo(p, read_only=True, application_name='pgmigrate-backup')}"]
    if p["format"] == "directory" and p["jobs"] > 1:
        argv.append(f"--jobs={p['jobs']}")
    if p["compress"]:
        argv.append(f"--compress={p['compress']}")
    return argv


def dump(p: dict, path: str, env: dict, secrets: list[str], pg_dump: str) -> tuple[dict, dict, str]:
    """pg_dump from a held, exported snapshot; row counts counted in that snapshot meanwhile.
    Without pg_bin_dir, the controller's pg_dump of the server's major version (pg_program).
    Returns (source facts, row counts, the pg_dump used)."""
    with Snapshot(p, p["lock_wait_timeout"], "pgmigrate-backup-snapshot") as snap:
        facts = snap.facts()
        if not p["pg_bin_dir"]:
            pg_dump = pg_program("pg_dump", "", facts["server_version_num"] // 10000)
        require_dump_version(pg_dump, facts["server_version_num"], describe_target(p))
        counts, ended = dump_beside(dump_argv(pg_dump, p, path, snap.id), env,
                                    os.path.join(os.path.dirname(env["PGPASSFILE"]), "pg_dump.err"),
                                    snap.count_rows if p["row_counts"] else dict)
    code, stderr = ended.code, ended.stderr
    if code != 0:
        hint = ""
        if "lock" in stderr.lower() and "timeout" in stderr.lower():
            hint = (" (a table lock was not granted within backup_lock_wait_timeout: a long "
                    "transaction or DDL holds it; find it in pg_stat_activity)")
        raise MigrationError(f"pg_dump failed (exit {code}): {scrub(first_lines(stderr), secrets)}{hint}")
    return facts, counts, pg_dump


def admin_connection(server: dict, maintenance_db: str):
    conn = connect({**server, "db_name": maintenance_db}, "pgmigrate-backup-verify")
    conn.autocommit = True
    return conn


def create_scratch(cur, name: str, facts: dict) -> None:
    """A scratch database like the source (encoding and locale where the server has them)."""
    base = f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING %s"
    try:
        cur.execute(base + " LC_COLLATE %s LC_CTYPE %s", (facts["encoding"], facts["lc_collate"], facts["lc_ctype"]))
    except Exception as exc:  # noqa: BLE001 - a locale the verify server lacks: the server's own
        if getattr(exc, "pgcode", None) != "22023":
            raise
        cur.execute(base, (facts["encoding"],))


def test_restore(p: dict, path: str, facts: dict, counts: dict, pg_restore: str, workdir: str,
                 secrets: list[str]) -> dict:
    """Restore the archive into a scratch database, count its rows, compare, drop it."""
    server = {k: p[k] for k in ("db_host", "db_port", "db_user", "db_password", "db_sslmode")}
    server.update({k: v for k, v in (p["verify_server"] or {}).items() if v not in (None, "")})
    server.setdefault("connect_timeout", 10)
    secrets = [*secrets, str(server.get("db_password") or "")]
    env = tool_env(write_passfile(workdir, [server]))
    name = f"pgmigrate_verify_{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    admin = admin_connection(server, p["maintenance_db"])
    try:
        with admin.cursor() as cur:
            try:
                create_scratch(cur, name, facts)
            except Exception as exc:  # noqa: BLE001 - name the privilege to grant
                raise MigrationError(
                    f"cannot create the scratch database for the test restore on "
                    f"{server['db_host']}:{server['db_port']}: {str(exc).strip()} (the backup user needs "
                    "CREATEDB there, or set backup_verify_server)") from None
        try:
            argv = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
                    f"--dbname={conninfo({**server, 'db_name': name}, application_name='pgmigrate-backup-verify')}"]
            if p["jobs"] > 1:
                argv.append(f"--jobs={p['jobs']}")
            run_tool([*argv, path], env, "the test restore (pg_restore)", secrets)
            check = connect({**server, "db_name": name}, "pgmigrate-backup-verify")
            try:
                with check.cursor() as cur:
                    restored = count_rows(cur)
                check.rollback()
            finally:
                check.close()
        finally:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        admin.close()
    differences = compare_counts(counts, restored)
    if differences:
        raise MigrationError(f"the test restore of {path} does not match its manifest: "
                             + "; ".join(differences[:10]))
    return {"database": name, "server": f"{server['db_host']}:{server['db_port']}", "tables": len(restored),
            "rows": sum(restored.values()), "matched": True, "seconds": round(time.monotonic() - started, 2),
            "verified_at": utc_now()}


def write_manifest(path: str, manifest: dict) -> str:
    target = path.rstrip("/") + ".manifest.json"
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, target)
    return target


def do_dump(module: AnsibleModule) -> None:
    p = module.params
    if not p["path"]:
        module.fail_json(msg="action=dump needs path")
    if p["verify_restore"] and not p["row_counts"]:
        module.fail_json(msg="verify_restore compares row counts with the manifest: it needs row_counts=true")
    secrets = [str(p["db_password"] or "")]
    try:
        pg_dump, pg_restore = pg_program("pg_dump", p["pg_bin_dir"]), pg_program("pg_restore", p["pg_bin_dir"])
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    path = free_path(p["path"].rstrip("/"))
    if module.check_mode:
        module.exit_json(changed=True, path=path, format=p["format"], msg=f"would write {path}")
    os.umask(0o077)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    started = time.monotonic()
    manifest: dict = {}
    try:
        with private_workdir(prefix="pgmigrate-backup-") as work:
            env = tool_env(write_passfile(work, [p]))
            try:
                facts, counts, pg_dump = dump(p, path, env, secrets, pg_dump)
                dumped = time.monotonic()
                if not p["pg_bin_dir"]:
                    # The pg_restore beside the pg_dump that wrote the archive (one that reads it).
                    pg_restore = pg_program("pg_restore", "", program_major(pg_dump))
                entries = restore_list_entries(pg_restore, path, env, secrets)
                if entries == 0:
                    raise MigrationError(f"pg_restore --list found no entries in {path}: the backup is not usable")
                sha256, files = archive_sha256(path)
                manifest = {
                    "path": path,
                    "format": p["format"],
                    "jobs": p["jobs"] if p["format"] == "directory" else 1,
                    "size_bytes": archive_size(path),
                    "sha256": sha256,
                    "sha256_method": "directory-listing" if files else "file",
                    "toc_entries": entries,
                    "database": facts["database"],
                    "server_version": facts["server_version"],
                    "database_size_bytes": facts["database_size_bytes"],
                    "encoding": facts["encoding"],
                    # The contract the restore reads: public's tables by bare name (a superset of
                    # the five prerequisite tables the first manifests held); every table in
                    # row_counts_all, schema-qualified (the ledger's, phase 1's backup tables...).
                    "row_counts": public_counts(counts, p.get("db_schema") or "public"),
                    "row_counts_all": counts,
                    "row_counts_exact": bool(p["row_counts"]),
                    "row_counts_source": "counted in the snapshot pg_dump read (pg_export_snapshot, "
                                         "pg_dump --snapshot)" if p["row_counts"] else "not counted",
                    "pg_dump_version": program_version(pg_dump),
                    "created_at": utc_now(),
                    "dump_seconds": round(dumped - started, 2),
                    "verified": {"pg_restore_list": True, "test_restore": None},
                    **p["manifest_extra"],
                }
                if files:
                    manifest["files"] = files
                if p["verify_restore"]:
                    manifest["verified"]["test_restore"] = test_restore(p, path, facts, counts, pg_restore, work,
                                                                        secrets)
                manifest["manifest"] = write_manifest(path, manifest)
            except BaseException:
                # A failed dump or verification must never pass for a backup.
                remove_archive(path)
                remove_archive(path + ".manifest.json")
                raise
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # noqa: BLE001 - psycopg2 and OS errors, secrets taken out
        module.fail_json(msg=f"backup of {describe_target(p)} failed: {scrub(str(exc).strip(), secrets)}")
    manifest["seconds"] = round(time.monotonic() - started, 2)
    module.exit_json(changed=True, backup=manifest, **{k: manifest[k] for k in ("path", "sha256", "size_bytes")})


def archives(directory: str, prefix: str) -> list[dict]:
    """Archives in directory: <prefix>*.dump files and <prefix>*.dir directories, newest first."""
    found = []
    if not os.path.isdir(directory):
        return found
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if not name.startswith(prefix) or name.endswith((".manifest.json", ".tmp")):
            continue
        if (name.endswith(".dump") and os.path.isfile(full)) or (name.endswith(".dir") and os.path.isdir(full)):
            found.append({"path": full, "mtime": os.path.getmtime(full)})
    return sorted(found, key=lambda a: a["mtime"], reverse=True)


def select_expired(found: list[dict], keep_count: int, keep_days: float, protect: set[str], now: float) -> list[str]:
    """What retention removes: nothing when both rules are off; otherwise an archive stays when it
    is among the keep_count newest, or younger than keep_days, or protected."""
    if keep_count <= 0 and keep_days <= 0:
        return []
    expired = []
    for rank, archive in enumerate(found):
        newest = keep_count > 0 and rank < keep_count
        young = keep_days > 0 and now - archive["mtime"] < keep_days * 86400
        if not (newest or young or os.path.realpath(archive["path"]) in protect):
            expired.append(archive["path"])
    return expired


def do_prune(module: AnsibleModule) -> None:
    p = module.params
    if not p["dir"] or not p["prefix"]:
        module.fail_json(msg="action=prune needs dir and prefix")
    protect = {os.path.realpath(x.rstrip("/")) for x in p["protect"] if x}
    found = archives(p["dir"], p["prefix"])
    expired = select_expired(found, p["keep_count"], p["keep_days"], protect, time.time())
    if not module.check_mode:
        for path in expired:
            remove_archive(path)
            remove_archive(path + ".manifest.json")
    kept = [a["path"] for a in found if a["path"] not in expired]
    module.exit_json(changed=bool(expired), removed=expired, kept=kept)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="dump", choices=["dump", "prune"]),
            path=dict(type="path"),
            format=dict(type="str", default="custom", choices=["custom", "directory"]),
            jobs=dict(type="int", default=1),
            compress=dict(type="str", default=""),
            lock_wait_timeout=dict(type="str", default="30s"),
            pg_bin_dir=dict(type="str", default=""),
            row_counts=dict(type="bool", default=True),
            verify_restore=dict(type="bool", default=False),
            verify_server=dict(type="dict", no_log=False),
            maintenance_db=dict(type="str", default="postgres"),
            manifest_extra=dict(type="dict", default={}),
            dir=dict(type="path"),
            prefix=dict(type="str"),
            keep_count=dict(type="int", default=0),
            keep_days=dict(type="float", default=0),
            protect=dict(type="list", elements="path", default=[]),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    if module.params["verify_server"] and module.params["verify_server"].get("db_password"):
        module.no_log_values.add(str(module.params["verify_server"]["db_password"]))
    if module.params["jobs"] < 1:
        module.fail_json(msg=f"jobs must be 1 or more, not {module.params['jobs']}")
    if module.params["action"] == "prune":
        do_prune(module)
    else:
        do_dump(module)


if __name__ == "__main__":
    main()
