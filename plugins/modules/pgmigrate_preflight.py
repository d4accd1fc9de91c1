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
      - files/sql/phase2/deploy/010_columns.sql
      - files/sql/phase2/deploy/020_tables.sql
    new_tables: [orchestration_workflows, workflow_executions, handover_packages, integration_events]
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: preflight
"""

RETURN = r"""
schema:
  description: The schema checked (the login's current schema).
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
"""

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
        cur.execute(f"SET LOCAL search_path = {PROBE_SCHEMA}, {schema}")
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
        cur.execute(f"SELECT count(*) FROM {schema}.{table}")
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
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        conn = connect(p, "pgmigrate-preflight")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_schema()")
                schema = cur.fetchone()[0]
                problems = check_prerequisites(cur, schema, p["prerequisites"])
                problems += check_privileges(cur, schema, p["require_create"],
                                             p["require_create_database"])
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
    module.exit_json(changed=False, schema=schema, adopted_tables=adopted, **report)


if __name__ == "__main__":
    main()
