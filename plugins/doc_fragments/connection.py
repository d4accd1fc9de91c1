# The options every database module takes to reach PostgreSQL (CONNECTION_ARGS in
# plugins/module_utils/pgmigrate.py): documented once, here.
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  db_host:
    description:
      - Host name, address or Unix socket directory of the database server (libpq C(host)).
      - The playbooks pass C(migration_db_host) through C(module_defaults).
    type: str
    required: true
  db_port:
    description: Port of the database server (C(migration_db_port)).
    type: int
    default: 5432
  db_name:
    description: The database to migrate (C(migration_db_name)).
    type: str
    required: true
  db_user:
    description: The login the migration connects as (C(migration_db_user)).
    type: str
    required: true
  db_password:
    description:
      - Password of I(db_user) (C(migration_db_password), from a vault). Never logged, never in a
        result or report (C(no_log)). Leave unset to use C(~/.pgpass) or trust/peer authentication.
    type: str
  db_sslmode:
    description: The libpq C(sslmode) of the connection (C(migration_db_sslmode)).
    type: str
    default: prefer
  connect_timeout:
    description: Seconds to wait for the connection before failing with a message naming the fix.
    type: int
    default: 10
  db_parallel_workers:
    description:
      - Parallel workers a migration session may start (C(max_parallel_workers_per_gather) and
        C(max_parallel_maintenance_workers)). C(0) keeps each session to one CPU, leaving the
        others to the application.
    type: int
    default: 0
  db_schema:
    description:
      - The schema of the application's tables (C(migration_db_schema)). Every session's
        C(search_path) is that schema alone, so the migration's SQL creates its objects there and
        never resolves a name to a same-named object of another schema.
    type: str
    default: public
requirements:
  - psycopg2 (or psycopg2-binary) on the host that runs the module (the controller)
"""
