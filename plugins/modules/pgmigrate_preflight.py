#!/usr/bin/python
# Phase 1's read-only checks: prerequisite tables and columns, objects phase 2 would create that
# already exist with another shape, the strategy's integrity counts and the orphan report.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_preflight
short_description: Check prerequisites and conflicts before the migration changes anything
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - Phase 1's read-only checks - prerequisite tables and columns, the login's privileges, objects
    phase 2 would create that already exist with another shape, the strategy's integrity counts
    and the orphan report.
  - Never changes anything (the shape probe runs phase 2's DDL in a scratch schema, in a
    transaction that is rolled back), and locks none of the application's tables (the
    prerequisites have bare copies there, which the new tables' foreign keys reference).
  - Fails naming every missing table, missing or mistyped column, and conflicting object.
options:
  prerequisites:
    type: dict
    required: true
    description: Table name to (column name to type, or null for any type) - what the migration needs to find.
  shape_files:
    description: Phase 2's DDL files, run in the scratch schema to learn the shapes it creates.
    type: list
    elements: path
    default: []
  new_tables:
    description: The tables phase 2 creates; one existing with another shape is a conflict.
    type: list
    elements: str
    default: []
  extended_table:
    description: >-
      The application's table phase 2 adds columns to; an existing column of another type is a
      conflict.
    type: str
    default: client_app_overrides
  check_conflicts:
    description: Run the shape probe and look for conflicting objects (false once phase 2 is applied).
    type: bool
    default: true
  report:
    type: bool
    default: true
    description: Also return the integrity counts and the orphan report, from one snapshot.
  require_create:
    type: bool
    default: true
    description: The login needs CREATE on the schema (a phase of the run creates tables, views, functions).
  require_create_database:
    type: bool
    default: true
    description: The login needs CREATE on the database (the ledger's schema and the shape probe's).
  owned_tables:
    type: list
    elements: str
    default: []
    description:
      - Tables the run alters (columns, indexes, triggers, foreign keys, row-level security), which
        only their owner may alter. The login must own each one that exists, or have its owner's
        privileges (a member of the owning role with INHERIT, as on Supabase and RDS).
  referenced_tables:
    type: list
    elements: str
    default: []
    description: Tables the new foreign keys reference (the login needs REFERENCES on them).
  require_access:
    type: bool
    default: false
    description: >-
      Phase 5 runs: the role C(authenticated) where absent (CREATEROLE), the schema C(auth) where
      absent (CREATE on the database), C(auth.jwt()) where absent (CREATE on C(auth)), and the
      views and functions it replaces (their owner).
  access_views:
    type: list
    elements: str
    default: []
    description: The views phase 5 creates or replaces in the schema.
  access_functions:
    type: list
    elements: str
    default: []
    description: The functions phase 5 creates or replaces in the schema (name without arguments).
  backup_dir:
    type: path
    description:
      - Where phase 1's archive goes, on the controller. Set, the preflight refuses a destination
        without room for the archive (see I(backup_space_ratio)).
  backup_space_ratio:
    type: float
    default: 1.0
    description:
      - The archive's size as a fraction of the size of the tables it holds (heap and TOAST,
        C(pg_table_size), of every table pg_dump dumps; index data is never dumped).
  backup_required_free_bytes:
    type: int
    default: 0
    description: Free bytes the backup destination needs; 0 estimates it (I(backup_space_ratio)).
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Check the prerequisites and what phase 2 would find in its way
  agency.pgmigrate.pgmigrate_preflight:
    prerequisites:
      clients_enhanced: {id: uuid, name: text, created_at: null}
      marketplace_modules: {id: uuid, name: text}
      client_app_overrides: {id: uuid, client_id: uuid, app_name: text, enabled: boolean}
    shape_files:
      - migrations/ht036/phase2/deploy/010_columns.sql
      - migrations/ht036/phase2/deploy/020_tables.sql
    new_tables: [orchestration_workflows, workflow_executions, handover_packages, integration_events]
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: preflight
"""

RETURN = r"""
schema:
  description: The schema checked (the schema of the migrated tables, migration_db_schema).
  returned: success
  type: str
  sample: public
adopted_tables:
  description: Tables phase 2 creates that exist already with its shape (adopted, not a conflict).
  returned: success
  type: list
  elements: str
row_counts:
  description: Rows of each prerequisite table.
  returned: when I(report) is true
  type: dict
orphans:
  description: The strategy's integrity counts (rows referring to rows that do not exist).
  returned: when I(report) is true
  type: dict
backup_space:
  description: >-
    The backup destination's check - the directory measured, its free bytes, the bytes required
    and the tables' size they were estimated from.
  returned: when I(backup_dir) is set
  type: dict
"""

import math
import os
import shutil
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
    connect,
    fetch_dicts,
    quote_ident,
    with_lock_retry,
)

TEXT_TYPES = {"text", "character varying", "character"}
PROBE_SCHEMA = "pgmigrate_shape_probe"


def columns_of(cur, schema: str, table: str) -> dict[str, str]:
    cur.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
            WHERE a.attrelid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))
              AND a.attnum > 0 AND NOT a.attisdropped""",
        (schema, table))
    return dict(cur.fetchall())


def type_matches(actual: str, expected: str | None) -> bool:
    if expected is None:
        return True
    if expected == "text":
        return actual == "text" or actual.startswith("character")
    return actual == expected


def check_prerequisites(cur, schema: str, prerequisites: dict) -> list[str]:
    problems = []
    for table, columns in prerequisites.items():
        found = columns_of(cur, schema, table)
        if not found:
            problems.append(f"missing prerequisite table {schema}.{table}")
            continue
        for column, expected in (columns or {}).items():
            if column not in found:
                problems.append(f"missing column {table}.{column}")
            elif not type_matches(found[column], expected):
                problems.append(f"column {table}.{column} is {found[column]}, expected {expected}")
    return problems


def check_privileges(cur, schema: str, create: bool, create_database: bool) -> list[str]:
    """What the login may not do that the run will do, each with the GRANT that fixes it."""
    cur.execute("""SELECT current_user, current_database(), has_schema_privilege(%s, 'CREATE'),
                          has_database_privilege(current_database(), 'CREATE')""", (schema,))
    user, database, on_schema, on_database = cur.fetchone()
    problems = []
    if create and not on_schema:
        problems.append(f"login {user} lacks CREATE on schema {schema} (phases 1, 2 and 5 create the "
                        f"backup tables, the new tables, the views and functions there): as the schema's "
                        f"owner, GRANT CREATE ON SCHEMA {schema} TO {user}; or log in as a role that has it")
    if create_database and not on_database:
        problems.append(f"login {user} lacks CREATE on database {database} (the ledger's schema "
                        f"migration_ledger is created there): GRANT CREATE ON DATABASE {database} TO {user}")
    return problems


def check_schema(cur, schema: str) -> list[str]:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), current_schema()",
                (schema,))
    exists, current = cur.fetchone()
    if not exists:
        return [f"schema {schema} does not exist in this database: set migration_db_schema to the schema "
                f"that holds the application's tables (default public)"]
    if current != schema:
        return [f"the login may not use schema {schema} (current schema {current}): as its owner, "
                f"GRANT USAGE, CREATE ON SCHEMA {quote_ident(schema)} TO the login"]
    return []


def check_ownership(cur, schema: str, owned: list[str], referenced: list[str]) -> list[str]:
    """Tables only their owner may alter, and those the new foreign keys reference, each with
    the statement that fixes it. The owner's privileges come with ownership itself or with
    membership in the owning role with INHERIT (pg_has_role ... 'USAGE'): a managed platform's
    login (Supabase's postgres, an RDS master user) is no superuser but often such a member.
    A member without INHERIT would have to SET ROLE first, which the run does not do."""
    problems = []
    for table in owned:
        cur.execute("""SELECT current_user, pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE'),
                              pg_has_role(c.relowner, 'MEMBER')
                         FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))""",
                    (schema, table))
        row = cur.fetchone()
        if row is None or row[2]:
            continue
        user, owner, _usage, member = row
        name = f"{quote_ident(schema)}.{quote_ident(table)}"
        if member:
            problems.append(f"login {user} is a member of role {owner}, which owns table {schema}.{table}, "
                            f"without INHERIT, so it may not alter the table (the run does not SET ROLE): "
                            f"ALTER ROLE {quote_ident(user)} INHERIT, or log in as {owner}")
        else:
            problems.append(f"login {user} does not own table {schema}.{table} (owner {owner}), which the "
                            f"migration alters (columns, indexes, triggers, foreign keys, row-level "
                            f"security; only its owner may): as {owner} or a superuser, ALTER TABLE {name} "
                            f"OWNER TO {quote_ident(user)}; or GRANT {quote_ident(owner)} TO "
                            f"{quote_ident(user)} (membership with INHERIT); or log in as {owner}")
    for table in referenced:
        cur.execute("""SELECT current_user, pg_get_userbyid(c.relowner),
                              has_table_privilege(c.oid, 'REFERENCES')
                         FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))""",
                    (schema, table))
        row = cur.fetchone()
        if row is not None and not row[2]:
            user, owner, _ok = row
            problems.append(f"login {user} lacks REFERENCES on table {schema}.{table} (the new foreign keys "
                            f"reference it): as {owner}, GRANT REFERENCES ON {quote_ident(schema)}."
                            f"{quote_ident(table)} TO {quote_ident(user)}")
    return problems


def check_access(cur, schema: str, views: list[str], functions: list[str]) -> list[str]:
    """What phase 5 (views, row-level security, grants) needs that the login lacks. Its
    policies and grants on the new tables need their ownership (check_ownership); GRANT on a
    view or function needs its ownership too, and CREATE OR REPLACE of an existing one as well."""
    cur.execute("""SELECT current_user, current_database(),
                          EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated'),
                          (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user),
                          has_database_privilege(current_database(), 'CREATE'),
                          (SELECT oid FROM pg_namespace WHERE nspname = 'auth'),
                          to_regprocedure('auth.jwt()') IS NOT NULL""")
    user, database, has_role, may_create_role, on_database, auth, has_jwt = cur.fetchone()
    problems = []
    if not has_role and not may_create_role:
        problems.append(f"role authenticated does not exist and login {user} may not create it (phase 5 "
                        f"creates it for its policies and grants): as a superuser or a role with CREATEROLE, "
                        f"CREATE ROLE authenticated NOLOGIN; or ALTER ROLE {quote_ident(user)} CREATEROLE")
    if auth is None and not on_database:
        problems.append(f"schema auth does not exist and login {user} lacks CREATE on database {database} "
                        f"(phase 5 creates auth and auth.jwt()): GRANT CREATE ON DATABASE "
                        f"{quote_ident(database)} TO {quote_ident(user)}")
    if auth is not None and not has_jwt:
        cur.execute("SELECT has_schema_privilege('auth', 'CREATE'), pg_get_userbyid(nspowner) "
                    "FROM pg_namespace WHERE nspname = 'auth'")
        on_auth, owner = cur.fetchone()
        if not on_auth:
            problems.append(f"auth.jwt() does not exist and login {user} lacks CREATE on schema auth "
                            f"(phase 5 creates the function there): as {owner}, GRANT CREATE ON SCHEMA "
                            f"auth TO {quote_ident(user)}")
    # The tenant sessions phase 5 grants to (and phase 6 checks) reach the tables only through
    # the schema: PUBLIC has USAGE on public, seldom on a schema of one's own (Supabase exposes
    # one only when told). Granting on a schema is its owner's call, not the migration's.
    cur.execute("""SELECT CASE WHEN to_regrole('authenticated') IS NOT NULL
                               THEN has_schema_privilege('authenticated', n.oid, 'USAGE')
                               ELSE EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                                             WHERE a.grantee = 0 AND a.privilege_type = 'USAGE') END,
                          pg_get_userbyid(n.nspowner)
                     FROM pg_namespace n WHERE n.nspname = %s""", (schema,))
    usage, schema_owner = cur.fetchone()
    if not usage:
        first = "" if has_role else "CREATE ROLE authenticated NOLOGIN, then "
        problems.append(f"role authenticated, whose sessions phase 5's grants and policies serve, has no USAGE on "
                        f"schema {schema}: as {schema_owner}, {first}GRANT USAGE ON SCHEMA {quote_ident(schema)} "
                        f"TO authenticated")
    cur.execute("""SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %s AND c.relname = ANY (%s) AND NOT pg_has_role(c.relowner, 'USAGE')
                   UNION ALL
                   SELECT p.proname || '()', pg_get_userbyid(p.proowner) FROM pg_proc p
                     JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname = %s AND p.proname = ANY (%s) AND NOT pg_has_role(p.proowner, 'USAGE')
                   ORDER BY 1""", (schema, views, schema, functions))
    for name, owner in cur.fetchall():
        problems.append(f"{schema}.{name} exists, owned by {owner}, and phase 5 replaces it and grants on "
                        f"it (only its owner may): as {owner}, drop it or give it to {user} (ALTER ... "
                        f"OWNER TO {quote_ident(user)})")
    return problems


def monitoring_warnings(cur) -> list[str]:
    """What the run watches less well without pg_read_all_stats (pg_monitor includes it): never
    a refusal, since the migration itself is correct without it."""
    cur.execute("SELECT current_user, pg_has_role('pg_read_all_stats', 'USAGE')")
    user, reads_all = cur.fetchone()
    if reads_all:
        return []
    return [f"login {user} is not a member of pg_read_all_stats (nor pg_monitor): other logins' sessions "
            f"show no state, query or start in pg_stat_activity, so the throttle's and the monitoring's "
            f"active-session counts and longest query see only this login's sessions, an autovacuum's "
            f"query (anti-wraparound or not) is unknown, and the replicas' lag is not watched. "
            f"GRANT pg_read_all_stats TO {quote_ident(user)} (or pg_monitor) to watch them"]


def tables_bytes(cur) -> int:
    """Heap and TOAST of every table pg_dump dumps (index data is never dumped)."""
    cur.execute("SELECT coalesce(sum(pg_table_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'")
    return int(cur.fetchone()[0])


def check_backup_space(cur, directory: str, ratio: float, required: int) -> tuple[list[str], dict]:
    """Room for phase 1's archive where it goes, before anything is written. The directory may
    not exist yet: its nearest existing parent is on the file system it will be on."""
    measured = os.path.abspath(directory)
    while not os.path.exists(measured) and os.path.dirname(measured) != measured:
        measured = os.path.dirname(measured)
    free = shutil.disk_usage(measured).free
    size = tables_bytes(cur)
    need = required if required > 0 else math.ceil(size * ratio)
    info = {"dir": directory, "measured": measured, "free_bytes": free, "required_bytes": need,
            "tables_bytes": size, "ratio": ratio if required <= 0 else None}
    if free >= need:
        return [], info
    how = (f"migration_backup_required_free_bytes={required}" if required > 0 else
           f"{size} bytes of tables x migration_backup_space_ratio {ratio}")
    return [f"the backup destination {directory} has {free} bytes free ({_mib(free)}) and phase 1's archive "
            f"needs about {need} ({_mib(need)}; {how}): free space there, point migration_backup_dir at a "
            f"larger file system, or lower migration_backup_space_ratio if the archive is known to be "
            f"smaller"], info


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def probe_shapes(conn, schema: str, files: list[str], tables: list[str], extended: str,
                 referenced: list[str], lock: dict) -> dict[str, dict[str, str]]:
    """Run phase 2's DDL in a scratch schema inside a transaction that is always rolled back,
    and read the shapes it creates: the expected shape always matches the SQL files.

    Nothing in it takes a lock on the application's tables: the extended table and the tables
    the new ones reference (`referenced`, the prerequisites) have bare copies in the scratch
    schema, so a foreign key resolves there. On the real clients_enhanced, a foreign key's SHARE
    ROW EXCLUSIVE lock would stop the application's writes to it until the rollback, several
    round trips later."""
    sqls = [Path(path).read_text(encoding="utf-8") for path in files]

    class Rollback(Exception):
        pass

    shapes: dict[str, dict[str, str]] = {}

    def work(cur):
        cur.execute(f"CREATE SCHEMA {PROBE_SCHEMA}")
        cur.execute(f"SET LOCAL search_path = {PROBE_SCHEMA}, {quote_ident(schema)}")
        # A bare copy of the extended table, so ADD COLUMN IF NOT EXISTS shows the intended types.
        cur.execute(f"CREATE TABLE {PROBE_SCHEMA}.{extended} (id uuid)")
        for table in referenced:
            if table != extended and table not in tables:
                cur.execute(f"CREATE TABLE {PROBE_SCHEMA}.{quote_ident(table)} (id uuid PRIMARY KEY)")
        for sql in sqls:
            cur.execute(sql)
        for table in tables + [extended]:
            shapes[table] = columns_of(cur, PROBE_SCHEMA, table)
        raise Rollback()

    try:
        with_lock_retry(conn, work, lock, transactional=True)
    except Rollback:
        conn.rollback()
    return shapes


def find_conflicts(cur, schema: str, shapes: dict, extended: str) -> tuple[list[str], list[str]]:
    conflicts, adopted = [], []
    for table, expected in shapes.items():
        actual = columns_of(cur, schema, table)
        if table == extended:
            for column, typ in expected.items():
                if column != "id" and column in actual and actual[column] != typ:
                    conflicts.append(f"column {table}.{column} already exists as {actual[column]}, "
                                     f"phase 2 adds it as {typ}")
            continue
        if not actual:
            continue
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        retyped = sorted(c for c in set(expected) & set(actual) if expected[c] != actual[c])
        if missing or extra or retyped:
            parts = []
            if missing:
                parts.append("lacks " + ", ".join(missing))
            if extra:
                parts.append("has unexpected " + ", ".join(extra))
            if retyped:
                parts.append("differs in type of " + ", ".join(
                    f"{c} ({actual[c]} vs {expected[c]})" for c in retyped))
            conflicts.append(f"table {schema}.{table} already exists with another shape: "
                             + "; ".join(parts) + " (rename or drop it before phase 2)")
        else:
            adopted.append(table)
    return conflicts, adopted


def integrity_report(cur, schema: str, prerequisites: dict) -> dict:
    counts = {}
    for table in prerequisites:
        cur.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}")
        counts[table] = cur.fetchone()[0]
    report = fetch_dicts(cur, """
        SELECT
          (SELECT count(*) FROM client_app_overrides cao
            WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced WHERE id = cao.client_id))
            AS orphaned_overrides,
          (SELECT count(*) FROM module_installations mi
            WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced WHERE id = mi.tenant_id))
            AS orphaned_installations,
          (SELECT count(*) FROM client_app_overrides cao
            WHERE NOT EXISTS (SELECT 1 FROM marketplace_modules mm WHERE mm.name = cao.app_name))
            AS overrides_with_unknown_app,
          (SELECT count(*) FROM (SELECT name FROM marketplace_modules GROUP BY name
                                  HAVING count(*) > 1) d) AS duplicated_module_names,
          (SELECT count(*) FROM clients_enhanced c
            WHERE NOT EXISTS (SELECT 1 FROM client_deployments d WHERE d.client_id = c.id))
            AS clients_without_deployments""")[0]
    return {"row_counts": counts, "orphans": report}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prerequisites=dict(type="dict", required=True),
            shape_files=dict(type="list", elements="path", default=[]),
            new_tables=dict(type="list", elements="str", default=[]),
            extended_table=dict(type="str", default="client_app_overrides"),
            check_conflicts=dict(type="bool", default=True),
            report=dict(type="bool", default=True),
            require_create=dict(type="bool", default=True),
            require_create_database=dict(type="bool", default=True),
            owned_tables=dict(type="list", elements="str", default=[]),
            referenced_tables=dict(type="list", elements="str", default=[]),
            require_access=dict(type="bool", default=False),
            access_views=dict(type="list", elements="str", default=[]),
            access_functions=dict(type="list", elements="str", default=[]),
            backup_dir=dict(type="path"),
            backup_space_ratio=dict(type="float", default=1.0),
            backup_required_free_bytes=dict(type="int", default=0),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        conn = connect(p, "pgmigrate-preflight")
        try:
            schema = p["db_schema"]
            space: dict = {}
            with conn.cursor() as cur:
                problems = check_schema(cur, schema)
                if not problems:
                    problems = check_prerequisites(cur, schema, p["prerequisites"])
                    problems += check_privileges(cur, schema, p["require_create"],
                                                 p["require_create_database"])
                    problems += check_ownership(cur, schema, p["owned_tables"], p["referenced_tables"])
                    if p["require_access"]:
                        problems += check_access(cur, schema, p["access_views"], p["access_functions"])
                    for warning in monitoring_warnings(cur):
                        module.warn(warning)
                    if p["backup_dir"]:
                        short, space = check_backup_space(cur, p["backup_dir"], p["backup_space_ratio"],
                                                          p["backup_required_free_bytes"])
                        problems += short
            conn.rollback()
            if problems:
                module.fail_json(msg="prerequisites not met: " + "; ".join(problems) + ". Nothing was changed.",
                                 problems=problems)
            adopted: list[str] = []
            if p["check_conflicts"]:
                shapes = probe_shapes(conn, schema, p["shape_files"], p["new_tables"], p["extended_table"],
                                      list(p["prerequisites"]), {k: p[k] for k in LOCK_ARGS})
                with conn.cursor() as cur:
                    conflicts, adopted = find_conflicts(cur, schema, shapes, p["extended_table"])
                conn.rollback()
                if conflicts:
                    module.fail_json(msg="objects phase 2 would create already exist with another "
                                         "shape: " + "; ".join(conflicts), conflicts=conflicts)
            report: dict = {}
            if p["report"]:
                with conn.cursor() as cur:
                    # One snapshot for every count, so the report adds up on a busy database.
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    report = integrity_report(cur, schema, p["prerequisites"])
                conn.rollback()
        finally:
            conn.close()
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    if space:
        report["backup_space"] = space
    module.exit_json(changed=False, schema=schema, adopted_tables=adopted, **report)


if __name__ == "__main__":
    main()
