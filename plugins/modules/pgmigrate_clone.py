#!/usr/bin/python
# Clone a source database (production) into a staging database with pg_dump and pg_restore,
# replacing what the staging database held (strategy 2.1: "Clone production database to staging").
#   check: read-only refusals before anything changes - the target is not the source (same server
#          and database), not a protected (production) database; both servers reachable; pg_dump
#          new enough; the staging user may create and replace databases; roles and extensions
#          the dump needs exist on the staging server; masking rules name real text columns.
#   run:   the check, then: a new database on the staging server (the source's encoding and
#          locale); pg_dump from one exported snapshot of the source, held open while its row
#          counts are taken in it; pg_restore; the clone's row counts compared with the source's;
#          personal data masked on request; ANALYZE; then the new database takes the staging
#          database's name and the old one is dropped. A failure before the swap leaves the
#          staging database as it was.
# The source is only read: every session on it, ours and pg_dump's, is READ ONLY.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_clone
short_description: Clone a source database into the staging database (pg_dump, pg_restore)
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - The db_* options are the staging (target) database; I(source) is the database to copy. The
    source is only read - every session on it, the module's and pg_dump's, is READ ONLY.
  - C(check) runs the read-only refusals before anything changes - the target is not the source
    (same server and database), not a I(protected) database; both servers reachable; pg_dump new
    enough; the staging login may create and replace databases; the roles and extensions the dump
    needs exist on the staging server; masking rules name real text columns.
  - C(run) does the check, then creates a new database on the staging server, restores the dump
    taken from one exported snapshot of the source, compares the clone's row counts with the
    source's, masks personal data on request, runs ANALYZE, and swaps the new database in under
    the staging database's name. A failure before the swap leaves the staging database as it was.
  - C(method=pipe) streams pre-data and data from pg_dump into pg_restore (nothing on disk), then
    restores post-data (indexes, constraints, triggers, policies) from a small archive with
    I(jobs) parallel jobs. C(method=directory) dumps the directory format with I(jobs) jobs into a
    private temporary directory under I(workdir), then restores it with I(jobs) jobs.
  - "Masking (I(mask)): a name becomes C('Client ' || substr(sha256(salt || 'name:' || value), 1, 12)),
    an e-mail address C('user-' || substr(sha256(salt || 'email:' || lower(value)), 1, 16) ||
    '@example.invalid'), a hashed value C(substr(sha256(salt || 'hash:' || value), 1, 16)) (hex
    digits); NULL stays NULL. Deterministic: equal values stay equal in every clone made with the
    same salt."
options:
  action:
    description: Only run the refusals (C(check)), or clone (C(run)).
    type: str
    default: run
    choices: [check, run]
  source:
    type: dict
    required: true
    description: The database to copy.
    suboptions:
      db_host:
        description: The source server's host.
        type: str
      db_port:
        description: The source server's port.
        type: int
        default: 5432
      db_name:
        description: The source database.
        type: str
      db_user:
        description: The login reading the source.
        type: str
      db_password:
        description: Its password (C(no_log)); it reaches pg_dump only through a private password file.
        type: str
      db_sslmode:
        description: The libpq C(sslmode) of the source connections.
        type: str
        default: prefer
  source_label:
    description: How messages name the source (its inventory host).
    type: str
    default: source
  target_label:
    description: How messages name the target (its inventory host).
    type: str
    default: staging
  target_environment:
    description: The target's environment; C(production) is refused.
    type: str
    default: staging
  protected:
    type: list
    elements: dict
    default: []
    description: >-
      Databases (C(host), C(port), C(name), optional C(label)) never replaced - the production
      hosts.
  maintenance_db:
    description: The database the module connects to on the staging server to create, swap and drop databases.
    type: str
    default: postgres
  method:
    description: How the dump reaches pg_restore.
    type: str
    default: pipe
    choices: [pipe, directory]
  jobs:
    type: int
    default: 2
    description: Parallel pg_dump and pg_restore jobs; with C(method=pipe) and 1 job, one single stream.
  lock_wait_timeout:
    description: pg_dump's C(--lock-wait-timeout) on the source (a PostgreSQL interval).
    type: str
    default: 30s
  pg_bin_dir:
    description: >-
      The directory of pg_dump and pg_restore; empty - those of the source's major version found on
      the controller.
    type: str
    default: ""
  workdir:
    description: Where the private temporary directory goes (default the system's temporary directory).
    type: path
  no_owner:
    description: Restore without ownership (pg_restore C(--no-owner)); the staging login owns everything.
    type: bool
    default: false
  no_privileges:
    description: Restore without grants (pg_restore C(--no-privileges)).
    type: bool
    default: false
  create_missing_roles:
    description: >-
      Create the roles the dump needs that the staging server lacks (NOLOGIN, staging server only)
      instead of refusing.
    type: bool
    default: false
  match_locale:
    description: Create the clone with the source's collation and ctype as well as its encoding.
    type: bool
    default: true
  verify_counts:
    description: >-
      Compare the clone's exact row counts with the source's (taken in the dump's snapshot); a
      difference fails the clone.
    type: bool
    default: true
  analyze:
    description: Run ANALYZE in the clone before the swap.
    type: bool
    default: true
  mask:
    description: Mask personal data in the clone before the swap.
    type: bool
    default: false
  mask_rules:
    description: >-
      Columns to mask, each C({table, column, rule}) with C(rule) one of C(name), C(email), C(hash).
    type: list
    elements: dict
    default: []
  mask_detect_emails:
    description: Also mask, as e-mail addresses, every text column whose name holds C(email).
    type: bool
    default: true
  mask_salt:
    description: The salt of the masking hashes (C(no_log)); keep it secret, or masked values can be guessed.
    type: str
    default: ""
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Clone production into staging, masked
  agency.pgmigrate.pgmigrate_clone:
    source:
      db_host: prod-db.example.internal
      db_name: app
      db_user: readonly
      db_password: "{{ vault_prod_readonly_password }}"
    source_label: prod
    protected:
      - {host: prod-db.example.internal, port: 5432, name: app, label: prod}
    mask: true
    mask_rules:
      - {table: customers, column: name, rule: name}
    mask_salt: "{{ vault_mask_salt }}"
    jobs: 4
    db_host: staging-db.example.internal
    db_name: app
    db_user: migrator
"""

RETURN = r"""
source:
  description: What the source is (server version, size, encoding, roles, extensions, settings).
  returned: always
  type: dict
method:
  description: The method used.
  returned: always
  type: str
jobs:
  description: The parallel jobs used.
  returned: always
  type: int
missing_roles:
  description: Roles the dump needs that the staging server lacks.
  returned: always
  type: list
  elements: str
mask_columns:
  description: Table to (column to rule) of what is masked.
  returned: always
  type: dict
notes:
  description: What the check noticed (for example a staging database on the source's own server).
  returned: always
  type: list
  elements: str
target_exists:
  description: Whether the staging database existed before.
  returned: always
  type: bool
target_server_version:
  description: The staging server's version.
  returned: always
  type: str
row_counts:
  description: C(run) - exact rows per table in the source's snapshot.
  returned: action is run
  type: dict
clone_row_counts:
  description: C(run) - rows per table in the clone.
  returned: action is run
  type: dict
rows:
  description: C(run) - rows copied.
  returned: action is run
  type: int
tables:
  description: C(run) - tables copied.
  returned: action is run
  type: int
masked:
  description: C(run) - rows masked per table.
  returned: action is run
  type: dict
timings:
  description: C(run) - seconds per step (dump, restore, counts, mask, analyze, swap, total).
  returned: action is run
  type: dict
replaced_existing:
  description: C(run) - whether an existing staging database was replaced.
  returned: action is run
  type: bool
"""

import hashlib
import ipaddress
import os
import socket
import time
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    quote_ident,
    quote_literal,
    refuse_transaction_pooler,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_dump import (
    SYSTEM_SCHEMAS,
    Snapshot,
    compare_counts,
    conninfo,
    count_rows,
    create_database,
    drop_database,
    dump_beside,
    first_lines,
    pg_program,
    pipe_beside,
    private_workdir,
    require_dump_version,
    run_tool,
    scrub,
    swap_in,
    tool_env,
    write_passfile,
)

SOURCE_KEYS = ("db_host", "db_port", "db_name", "db_user", "db_password", "db_sslmode")
MASK_RULES = ("name", "email", "hash")
TEXT_TYPES = ("text", "character varying", "character", "citext")

# Roles the dump refers to: owners (unless no_owner), grantors and grantees (unless
# no_privileges), and the roles of row-level security policies (always).
ROLES_SQL = f"""
WITH objects AS (
    SELECT c.relowner AS owner, c.relacl AS acl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE {SYSTEM_SCHEMAS}
    UNION ALL SELECT n.nspowner, n.nspacl FROM pg_namespace n WHERE {SYSTEM_SCHEMAS} AND n.nspname <> 'public'
    UNION ALL SELECT p.proowner, p.proacl FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE {SYSTEM_SCHEMAS}
    UNION ALL SELECT t.typowner, t.typacl FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE {SYSTEM_SCHEMAS}
    UNION ALL SELECT lomowner, lomacl FROM pg_largeobject_metadata
    UNION ALL SELECT defaclrole, defaclacl FROM pg_default_acl
), wanted AS (
    SELECT owner AS role, 'owner' AS why FROM objects WHERE %(owners)s
    UNION SELECT (aclexplode(acl)).grantee, 'grant' FROM objects WHERE %(grants)s AND acl IS NOT NULL
    UNION SELECT (aclexplode(acl)).grantor, 'grant' FROM objects WHERE %(grants)s AND acl IS NOT NULL
    UNION SELECT unnest(polroles), 'policy' FROM pg_policy
)
SELECT DISTINCT r.rolname FROM wanted w JOIN pg_roles r ON r.oid = w.role
 WHERE r.rolname !~ '^pg_' ORDER BY 1"""


# --- naming ---------------------------------------------------------------------------------

def tag_of(target_db: str) -> str:
    return hashlib.md5(target_db.encode()).hexdigest()[:8]  # noqa: S324 - a name, not security


def addresses(host: str, port: int) -> set[str]:
    """What a host name means, for comparing two targets: its addresses (loopback as one)."""
    if host.startswith("/"):
        return {f"socket:{host}"}
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return {host.lower()}
    out = set()
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        out.add("loopback" if ip.is_loopback else str(ip))
    return out


def same_database(a: dict, b: dict) -> bool:
    return (int(a["port"]) == int(b["port"]) and a["name"] == b["name"]
            and bool(addresses(str(a["host"]), int(a["port"])) & addresses(str(b["host"]), int(b["port"]))))


# --- the check ------------------------------------------------------------------------------

def source_params(p: dict) -> dict:
    src = {k: p["source"].get(k) for k in SOURCE_KEYS}
    src["db_port"] = int(src["db_port"] or 5432)
    src["db_sslmode"] = src["db_sslmode"] or "prefer"
    src["connect_timeout"] = 10
    missing = [k for k in ("db_host", "db_name", "db_user") if not src.get(k)]
    if missing:
        names = ", ".join("migration_" + k for k in missing)
        raise MigrationError(f"the clone source {p['source_label']} lacks {names} in the inventory")
    return src


def read_source(src: dict, p: dict) -> dict:
    """What the clone needs to know of the source, read in a read-only session."""
    conn = connect(src, "pgmigrate-clone-source")
    try:
        # pg_dump imports the snapshot this session exports: a transaction-mode pool breaks that.
        refuse_transaction_pooler(conn, src)
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("""SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                                  pg_postmaster_start_time()::text, current_setting('port'),
                                  pg_database_size(current_database()), to_jsonb(d),
                                  pg_encoding_to_char(d.encoding)
                             FROM pg_database d WHERE d.datname = current_database()""")
            version_num, version, started, port, size, database, encoding = cur.fetchone()
            cur.execute(ROLES_SQL, {"owners": not p["no_owner"], "grants": not p["no_privileges"]})
            roles = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
            extensions = [r[0] for r in cur.fetchall()]
            cur.execute("""SELECT coalesce(r.rolname, ''), unnest(s.setconfig)
                             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                             LEFT JOIN pg_roles r ON r.oid = s.setrole
                            WHERE d.datname = current_database() ORDER BY 1, 2""")
            settings = [{"role": r, "setting": s} for r, s in cur.fetchall()]
            columns = text_columns(cur)
        conn.rollback()
    finally:
        conn.close()
    return {"server_version_num": version_num, "server_version": version, "started": started, "port": port,
            "database_size_bytes": size, "encoding": encoding, "database": database, "roles": roles,
            "extensions": extensions, "settings": settings, "columns": columns}


def text_columns(cur) -> dict[str, dict[str, str]]:
    """{table key: {column: type}} of the text-like columns of user tables (for the masking)."""
    cur.execute(f"""
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               format_type(a.atttypid, NULL)
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMAS} AND n.nspname <> 'migration_ledger'
           AND a.attnum > 0 AND NOT a.attisdropped""")
    out: dict[str, dict[str, str]] = {}
    for schema, table, column, full_type, base_type in cur.fetchall():
        key = f"{schema}.{table}"
        out.setdefault(key, {})[column] = full_type if base_type in TEXT_TYPES else f"!{full_type}"
    return out


def read_target_server(p: dict) -> dict:
    admin = connect({**p, "db_name": p["maintenance_db"]}, "pgmigrate-clone-check")
    try:
        refuse_transaction_pooler(admin, {**p, "db_name": p["maintenance_db"]})
        admin.set_session(readonly=True)
        with admin.cursor() as cur:
            cur.execute("""SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                                  pg_postmaster_start_time()::text, current_setting('port'),
                                  r.rolsuper, r.rolcreatedb, r.rolcreaterole, pg_is_in_recovery()
                             FROM pg_roles r WHERE r.rolname = current_user""")
            version_num, version, started, port, superuser, createdb, createrole, recovery = cur.fetchone()
            cur.execute("""SELECT pg_get_userbyid(datdba), pg_has_role(datdba, 'MEMBER')
                             FROM pg_database WHERE datname = %s""", (p["db_name"],))
            row = cur.fetchone()
            cur.execute("SELECT rolname FROM pg_roles")
            roles = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT name FROM pg_available_extensions")
            extensions = {r[0] for r in cur.fetchall()}
        admin.rollback()
    finally:
        admin.close()
    return {"server_version_num": version_num, "server_version": version, "started": started, "port": port,
            "superuser": superuser, "createdb": createdb, "createrole": createrole, "in_recovery": recovery,
            "exists": row is not None, "owner": row[0] if row else None, "owns": bool(row and row[1]),
            "roles": roles, "extensions": extensions}


def resolve_mask(p: dict, columns: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """{table: {column: rule}}: the configured rules (checked against the source's catalog), and
    every text column whose name holds 'email' when mask_detect_emails."""
    plan: dict[str, dict[str, str]] = {}
    if not p["mask"]:
        return plan
    problems = []
    for rule in p["mask_rules"]:
        table, column, kind = str(rule.get("table", "")), str(rule.get("column", "")), str(rule.get("rule", ""))
        key = table if "." in table else f"{p.get('db_schema') or 'public'}.{table}"
        if kind not in MASK_RULES:
            problems.append(f"{table}.{column}: rule {kind!r} is none of {', '.join(MASK_RULES)}")
        elif key not in columns or column not in columns[key]:
            problems.append(f"{table}.{column}: no such column in the source")
        elif columns[key][column].startswith("!"):
            problems.append(f"{table}.{column}: type {columns[key][column][1:]} is not text")
        else:
            plan.setdefault(key, {})[column] = kind
    if problems:
        raise MigrationError("clone_mask_rules refer to what cannot be masked: " + "; ".join(problems)
                             + ". Fix clone_mask_rules (table, column, rule: name, email or hash). "
                             "Nothing was changed.")
    if p["mask_detect_emails"]:
        for key, cols in columns.items():
            for column, col_type in cols.items():
                if "email" in column.lower() and not col_type.startswith("!"):
                    plan.setdefault(key, {}).setdefault(column, "email")
    return plan


def check(p: dict, src: dict) -> dict:
    target = {"host": p["db_host"], "port": p["db_port"], "name": p["db_name"]}
    source = {"host": src["db_host"], "port": src["db_port"], "name": src["db_name"]}
    where = f"{p['target_label']} ({p['db_host']}:{p['db_port']}/{p['db_name']})"
    if p["target_environment"] == "production":
        raise MigrationError(f"{where} has migration_env=production: a clone replaces the whole database, so it "
                             "never targets production. Nothing was changed.")
    if same_database(target, source):
        raise MigrationError(f"clone_source {p['source_label']} resolves to the staging database itself {where}: "
                             "a clone would destroy its own source. Point clone_source at the production host. "
                             "Nothing was changed.")
    for other in p["protected"]:
        if same_database(target, {"host": other.get("host"), "port": other.get("port") or 5432,
                                  "name": other.get("name")}):
            raise MigrationError(f"{where} is the database of {other.get('label', 'a production host')} "
                                 "(migration_env=production): a clone never replaces it. Nothing was changed.")
    if p["pg_bin_dir"]:  # a bin_dir without the programs is refused before anything is read
        pg_program("pg_dump", p["pg_bin_dir"])
        pg_program("pg_restore", p["pg_bin_dir"])
    facts = read_source(src, p)
    # Without clone_pg_bin_dir: pg_dump of the source's major, pg_restore of staging's (never older).
    pg_dump = pg_program("pg_dump", p["pg_bin_dir"], facts["server_version_num"] // 10000)
    require_dump_version(pg_dump, facts["server_version_num"], f"clone_source {p['source_label']}")
    server = read_target_server(p)
    pg_restore = pg_program("pg_restore", p["pg_bin_dir"],
                            max(server["server_version_num"], facts["server_version_num"]) // 10000)
    if (facts["started"], facts["port"]) == (server["started"], server["port"]) and src["db_name"] == p["db_name"]:
        raise MigrationError(f"clone_source {p['source_label']} is the staging database itself {where} (same server, "
                             "same database): a clone would destroy its own source. Nothing was changed.")
    if server["in_recovery"]:
        raise MigrationError(f"the staging server of {where} is a standby (read-only): point migration_db_host at "
                             "its primary. Nothing was changed.")
    if server["server_version_num"] // 10000 < facts["server_version_num"] // 10000:
        raise MigrationError(
            f"the staging server runs PostgreSQL {server['server_version']}, older than the source's "
            f"{facts['server_version']}: a rehearsal there would not tell how production behaves. Upgrade staging. "
            "Nothing was changed.")
    if not (server["superuser"] or server["createdb"]):
        raise MigrationError(f"{p['db_user']} may not create databases on the staging server of {where}: grant it "
                             f"CREATEDB (ALTER ROLE {p['db_user']} CREATEDB). Nothing was changed.")
    if server["exists"] and not (server["superuser"] or server["owns"]):
        raise MigrationError(f"{p['db_user']} does not own {where} (owner {server['owner']}), so it cannot replace "
                             "it: make it the owner, or a member of the owner role. Nothing was changed.")
    missing_roles = [r for r in facts["roles"] if r not in server["roles"]]
    if missing_roles and not p["create_missing_roles"]:
        raise MigrationError(
            f"role(s) {', '.join(missing_roles)} own objects of, are granted rights in, or are named by policies "
            f"of the source but do not exist on the staging server: create them there, set "
            "clone_create_missing_roles=true (NOLOGIN roles, on the staging server only), or set clone_no_owner / "
            "clone_no_privileges. Nothing was changed.")
    if missing_roles and not (server["superuser"] or server["createrole"]):
        raise MigrationError(f"clone_create_missing_roles needs CREATEROLE for {p['db_user']} on the staging server "
                             f"(missing: {', '.join(missing_roles)}). Nothing was changed.")
    missing_ext = [e for e in facts["extensions"] if e not in server["extensions"]]
    if missing_ext:
        raise MigrationError(f"extension(s) {', '.join(missing_ext)} of the source are not installed on the "
                             "staging server: install their packages there. Nothing was changed.")
    mask = resolve_mask(p, facts.pop("columns"))
    notes = []
    if (facts["started"], facts["port"]) == (server["started"], server["port"]):
        notes.append("the staging database lives on the source's own server: the clone loads it")
    return {"pg_dump": pg_dump, "pg_restore": pg_restore, "source": facts, "server": server,
            "missing_roles": missing_roles, "mask": mask, "notes": notes}


# --- the run --------------------------------------------------------------------------------

def admin_connection(p: dict):
    conn = connect({**p, "db_name": p["maintenance_db"]}, "pgmigrate-clone")
    conn.autocommit = True
    return conn


def drop_leftovers(cur, target: str) -> list[str]:
    """Databases an interrupted clone of this target left behind. A staging database renamed
    aside but never replaced is put back first."""
    tag = tag_of(target)
    cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname DESC",
                (f"pgmigrate\\_%\\_{tag}\\_%",))
    names = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,))
    target_exists = cur.fetchone() is not None
    olds = [n for n in names if n.startswith("pgmigrate_old_")]
    if olds and not target_exists:
        cur.execute(f"ALTER DATABASE {quote_ident(olds[0])} RENAME TO {quote_ident(target)}")
        names.remove(olds[0])
    for name in names:
        drop_database(cur, name)
    return names


def run_pipe(p: dict, plan: dict, src: dict, tmp_conninfo: str, env: dict, work: str, secrets: list[str],
             restore_flags: list[str], timings: dict) -> dict:
    """pre-data and data streamed from pg_dump into pg_restore; post-data from a small archive
    restored with parallel jobs (with one job, everything in the one stream). One exported
    snapshot for all of it."""
    split = p["jobs"] > 1
    src_info = conninfo(src, read_only=True, application_name="pgmigrate-clone-dump")
    common = [plan["pg_dump"], "--format=custom", "--compress=0", "--no-password",
              f"--lock-wait-timeout={p['lock_wait_timeout']}", f"--dbname={src_info}"]
    started = time.monotonic()
    with Snapshot(src, p["lock_wait_timeout"], "pgmigrate-clone-snapshot") as snap:
        sections = ["--section=pre-data", "--section=data"] if split else []
        counts, restored, dumped = pipe_beside(
            [*common, "--blobs", *sections, f"--snapshot={snap.id}"],
            [plan["pg_restore"], *restore_flags, f"--dbname={tmp_conninfo}"], env,
            os.path.join(work, "dump.err"), os.path.join(work, "restore.err"), snap.count_rows)
        if restored.code != 0:
            raise MigrationError(f"pg_restore into the new staging database failed (exit {restored.code}): "
                                 f"{scrub(first_lines(restored.stderr), secrets)}")
        if dumped.code != 0:
            raise MigrationError(f"pg_dump of clone_source {p['source_label']} failed (exit {dumped.code}): "
                                 f"{scrub(first_lines(dumped.stderr), secrets)}")
        timings["copy_s"] = round(time.monotonic() - started, 2)
        if not split:
            return counts
        post = os.path.join(work, "post-data.dump")
        run_tool([*common, "--section=post-data", f"--snapshot={snap.id}", f"--file={post}"], env,
                 f"pg_dump (post-data) of clone_source {p['source_label']}", secrets)
    started = time.monotonic()
    run_tool([plan["pg_restore"], *restore_flags, f"--jobs={p['jobs']}", f"--dbname={tmp_conninfo}", post], env,
             "pg_restore (post-data: indexes, constraints, triggers, policies)", secrets)
    timings["post_data_s"] = round(time.monotonic() - started, 2)
    return counts


def run_directory(p: dict, plan: dict, src: dict, tmp_conninfo: str, env: dict, work: str, secrets: list[str],
                  restore_flags: list[str], timings: dict) -> dict:
    """The directory format: pg_dump and pg_restore both with parallel jobs."""
    archive = os.path.join(work, "dump")
    started = time.monotonic()
    with Snapshot(src, p["lock_wait_timeout"], "pgmigrate-clone-snapshot") as snap:
        counts, dumped = dump_beside(
            [plan["pg_dump"], "--format=directory", "--compress=0", "--blobs", "--no-password",
             f"--jobs={p['jobs']}", f"--lock-wait-timeout={p['lock_wait_timeout']}", f"--snapshot={snap.id}",
             f"--file={archive}", f"--dbname={conninfo(src, read_only=True, application_name='pgmigrate-clone-dump')}"],
            env, os.path.join(work, "dump.err"), snap.count_rows)
    if dumped.code != 0:
        raise MigrationError(f"pg_dump of clone_source {p['source_label']} failed: "
                             f"{scrub(first_lines(dumped.stderr), secrets)}")
    timings["dump_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    run_tool([plan["pg_restore"], *restore_flags, f"--jobs={p['jobs']}", f"--dbname={tmp_conninfo}", archive], env,
             "pg_restore into the new staging database", secrets)
    timings["restore_s"] = round(time.monotonic() - started, 2)
    return counts


MASK_SQL = {
    "name": "'Client ' || substr(encode(sha256(convert_to({salt} || 'name:' || {col}, 'UTF8')), 'hex'), 1, 12)",
    "email": "'user-' || substr(encode(sha256(convert_to({salt} || 'email:' || lower({col}), 'UTF8')), 'hex'), 1, 16)"
             " || '@example.invalid'",
    "hash": "substr(encode(sha256(convert_to({salt} || 'hash:' || {col}, 'UTF8')), 'hex'), 1, 16)",
}


def mask_sql(table: str, columns: dict[str, str], types: dict[str, str], salt: str) -> str:
    schema, name = table.split(".", 1)
    sets = []
    for column, rule in sorted(columns.items()):
        col = quote_ident(column)
        expr = MASK_SQL[rule].format(salt=quote_literal(salt), col=f"{col}::text")
        sets.append(f"{col} = CASE WHEN {col} IS NULL THEN NULL ELSE ({expr})::{types[column]} END")
    return f"UPDATE {quote_ident(schema)}.{quote_ident(name)} SET {', '.join(sets)}"


def mask(conn, plan: dict, salt: str) -> dict[str, int]:
    """Mask personal data in the new database (before it becomes the staging database). User
    triggers do not fire where the role may say so (session_replication_role = replica)."""
    masked = {}
    with conn.cursor() as cur:
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if cur.fetchone()[0]:
            cur.execute("SET session_replication_role = replica")
        for table, columns in sorted(plan.items()):
            schema, name = table.split(".", 1)
            cur.execute("""SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                            WHERE a.attrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass
                              AND a.attnum > 0""", (schema, name))
            types = dict(cur.fetchall())
            cur.execute(mask_sql(table, columns, types, salt))
            masked[table] = cur.rowcount
    conn.commit()
    return masked


# Settings whose stored value is a list in SQL syntax ("$user", public): applied as written.
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}


def apply_settings(cur, name: str, settings: list[dict], roles: set[str]) -> tuple[list[str], list[str]]:
    """The source's database-level settings (ALTER DATABASE ... SET), so the rehearsal runs under
    the same search_path, timeouts and so on as production. One the staging user may not set is
    skipped and named."""
    applied, skipped = [], []
    for item in settings:
        key, _sep, value = item["setting"].partition("=")
        role = item["role"]
        label = f"{role}: {item['setting']}" if role else item["setting"]
        if role and role not in roles:
            skipped.append(f"{label} (no role {role} on the staging server)")
            continue
        prefix = f"ALTER ROLE {quote_ident(role)} IN DATABASE" if role else "ALTER DATABASE"
        rendered = value if key.lower() in LIST_SETTINGS else quote_literal(value)
        try:
            cur.execute(f"{prefix} {quote_ident(name)} SET {quote_ident(key)} TO {rendered}")
            applied.append(label)
        except Exception as exc:  # noqa: BLE001 - a superuser-only setting: name it, go on
            skipped.append(f"{label} ({str(exc).strip().splitlines()[0]})")
    return applied, skipped


def swap(cur, tmp: str, target: str, exists: bool, owner: str | None, may_chown: bool) -> None:
    """The new database takes the staging database's name; the old one is dropped. Sessions on
    the staging database are ended (it is being replaced)."""
    if owner and may_chown:
        cur.execute(f"ALTER DATABASE {quote_ident(tmp)} OWNER TO {quote_ident(owner)}")
    if not exists:
        cur.execute(f"ALTER DATABASE {quote_ident(tmp)} RENAME TO {quote_ident(target)}")
        return
    old = f"pgmigrate_old_{tag_of(target)}_{uuid.uuid4().hex[:8]}"
    swap_in(cur, tmp, target, old)
    drop_database(cur, old)


def run(p: dict, src: dict, plan: dict) -> dict:
    secrets = [str(p.get("db_password") or ""), str(src.get("db_password") or "")]
    target = p["db_name"]
    tmp = f"pgmigrate_clone_{tag_of(target)}_{uuid.uuid4().hex[:8]}"
    timings: dict[str, float] = {}
    started = time.monotonic()
    admin = admin_connection(p)
    created = False
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(hashtext('pgmigrate-clone:' || %s))", (target,))
            if not cur.fetchone()[0]:
                raise MigrationError(f"another clone into {target} on this server is running; wait for it")
            leftovers = drop_leftovers(cur, target)
            created_roles = []
            for role in plan["missing_roles"]:
                cur.execute(f"CREATE ROLE {quote_ident(role)} NOLOGIN")
                created_roles.append(role)
            create_database(cur, tmp, plan["source"]["database"], plan["source"]["encoding"], p["match_locale"],
                            plan["server"]["server_version_num"], "set clone_match_locale=false")
            created = True
            settings, skipped = apply_settings(cur, tmp, plan["source"]["settings"],
                                               plan["server"]["roles"] | set(created_roles))
        timings["prepare_s"] = round(time.monotonic() - started, 2)
        flags = ["--exit-on-error", "--no-password"]
        if p["no_owner"]:
            flags.append("--no-owner")
        if p["no_privileges"]:
            flags.append("--no-privileges")
        tmp_params = {**p, "db_name": tmp}
        tmp_info = conninfo(tmp_params, application_name="pgmigrate-clone-restore")
        with private_workdir(p["workdir"], prefix="pgmigrate-clone-") as work:
            env = tool_env(write_passfile(work, [p, src]))
            copy = run_directory if p["method"] == "directory" else run_pipe
            counts = copy(p, plan, src, tmp_info, env, work, secrets, flags, timings)
        conn = connect(tmp_params, "pgmigrate-clone-verify")
        try:
            clone_counts: dict[str, int] = {}
            if p["verify_counts"]:
                step = time.monotonic()
                with conn.cursor() as cur:
                    clone_counts = count_rows(cur)
                conn.rollback()
                differences = compare_counts(counts, clone_counts)
                if differences:
                    raise MigrationError("the clone's row counts differ from the source's snapshot: "
                                         + "; ".join(differences[:10]))
                timings["verify_s"] = round(time.monotonic() - step, 2)
            masked = {}
            if plan["mask"]:
                step = time.monotonic()
                masked = mask(conn, plan["mask"], p["mask_salt"])
                timings["mask_s"] = round(time.monotonic() - step, 2)
            if p["analyze"]:
                step = time.monotonic()
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("ANALYZE")
                timings["analyze_s"] = round(time.monotonic() - step, 2)
        finally:
            conn.close()
        step = time.monotonic()
        with admin.cursor() as cur:
            server = plan["server"]
            swap(cur, tmp, target, server["exists"], server["owner"] if server["exists"] else None,
                 bool(server["superuser"]))
            created = False
        timings["swap_s"] = round(time.monotonic() - step, 2)
    except BaseException:
        if created:
            with admin.cursor() as cur:
                drop_database(cur, tmp)
        raise
    finally:
        admin.close()
    timings["total_s"] = round(time.monotonic() - started, 2)
    return {"row_counts": counts, "clone_row_counts": clone_counts, "rows": sum(counts.values()),
            "tables": len(counts), "masked": masked, "created_roles": created_roles,
            "settings_applied": settings, "settings_skipped": skipped, "dropped_leftovers": leftovers,
            "timings": timings, "replaced_existing": plan["server"]["exists"]}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="run", choices=["check", "run"]),
            source=dict(type="dict", required=True, options=dict(
                db_host=dict(type="str"), db_port=dict(type="int", default=5432), db_name=dict(type="str"),
                db_user=dict(type="str"), db_password=dict(type="str", no_log=True),
                db_sslmode=dict(type="str", default="prefer"))),
            source_label=dict(type="str", default="source"),
            target_label=dict(type="str", default="staging"),
            target_environment=dict(type="str", default="staging"),
            protected=dict(type="list", elements="dict", default=[]),
            maintenance_db=dict(type="str", default="postgres"),
            method=dict(type="str", default="pipe", choices=["pipe", "directory"]),
            jobs=dict(type="int", default=2),
            lock_wait_timeout=dict(type="str", default="30s"),
            pg_bin_dir=dict(type="str", default=""),
            workdir=dict(type="path"),
            no_owner=dict(type="bool", default=False),
            no_privileges=dict(type="bool", default=False),
            create_missing_roles=dict(type="bool", default=False),
            match_locale=dict(type="bool", default=True),
            verify_counts=dict(type="bool", default=True),
            analyze=dict(type="bool", default=True),
            mask=dict(type="bool", default=False),
            mask_rules=dict(type="list", elements="dict", default=[]),
            mask_detect_emails=dict(type="bool", default=True),
            mask_salt=dict(type="str", default="", no_log=True),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["jobs"] < 1:
        module.fail_json(msg=f"clone_jobs must be 1 or more, not {p['jobs']}")
    secrets = [str(p.get("db_password") or ""), str((p["source"] or {}).get("db_password") or "")]
    try:
        src = source_params(p)
        plan = check(p, src)
        summary = {"source": {k: v for k, v in plan["source"].items() if k not in ("database",)},
                   "missing_roles": plan["missing_roles"], "mask_columns": plan["mask"],
                   "notes": plan["notes"], "method": p["method"], "jobs": p["jobs"],
                   "target_exists": plan["server"]["exists"],
                   "target_server_version": plan["server"]["server_version"]}
        if p["action"] == "check" or module.check_mode:
            module.exit_json(changed=p["action"] == "run", **summary)
        result = run(p, src, plan)
    except MigrationError as exc:
        module.fail_json(msg=scrub(str(exc), secrets))
    except Exception as exc:  # noqa: BLE001 - psycopg2 and OS errors, secrets taken out
        module.fail_json(msg=f"the clone into {p['target_label']} failed: {scrub(str(exc).strip(), secrets)}")
    module.exit_json(changed=True, **summary, **result)


if __name__ == "__main__":
    main()
