"""Shared helpers for the pytest suite: throwaway clusters, connections, playbooks.

Use as `from helpers import run_playbook` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / "tools"
if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))
# tools/ is not a package: import pgcluster once tools/ is on sys.path.
pgcluster = importlib.import_module("pgcluster")
# The checkout is the collection agency.pgmigrate (collections/ansible_collections/agency/pgmigrate
# links to the root): with collections/ on sys.path, the suite imports our modules and module_utils
# by the names Ansible gives them, ansible_collections.agency.pgmigrate.plugins.<kind>.<name>.
COLLECTIONS_DIR = REPO_ROOT / "collections"
if str(COLLECTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_DIR))
PLUGINS_PACKAGE = "ansible_collections.agency.pgmigrate.plugins"


def plugin(kind: str, name: str) -> Any:
    """plugins/<kind>/<name>.py (kind: module_utils, modules or action), imported as Ansible names it."""
    return importlib.import_module(f"{PLUGINS_PACKAGE}.{kind}.{name}")

PLAYBOOK_TIMEOUT_S = 1800
TEST_HOST = "testdb"

__all__ = [
    "REPO_ROOT",
    "connect",
    "make_cluster_tempdir",
    "pgcluster",
    "run_playbook",
    "write_inventory",
]


def make_cluster_tempdir(prefix: str) -> Path:
    """A fresh temporary directory that can hold a cluster's data directory.

    mkdtemp makes it 0700; it is opened to 0711 so that, when the tests run as root, the
    `postgres` OS user that runs the server can pass through it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def connect(db: dict[str, Any]) -> psycopg2.extensions.connection:
    """psycopg2 connection from a dict with host, port, user, password and dbname."""
    return psycopg2.connect(
        host=db["host"],
        port=db["port"],
        user=db["user"],
        password=db["password"],
        dbname=db.get("dbname", "postgres"),
        connect_timeout=10,
        application_name="pytest",
    )


# The suite runs two workers on shared, loaded machines: a probe 50 % slower than its baseline
# is load noise here, not the migration. The criterion itself is tested in
# tests/test_monitoring.py with its own values. Every inventory of the suite that migrates
# carries these (inventory_data, rehearsal_helpers.host_vars).
LOADED_MACHINE_ABORT = {
    "migration_abort_degradation_pct": 1000,
    "migration_abort_min_delta_ms": 1000,
}


def inventory_data(db: dict[str, Any], env_name: str = "local") -> dict[str, Any]:
    """Inventory (group `databases`, one host) whose migration_db_* point at `db`."""
    host_vars = {
        "migration_db_host": db["host"],
        "migration_db_port": int(db["port"]),
        "migration_db_name": db["dbname"],
        "migration_db_user": db["user"],
        "migration_db_password": db["password"],
        "migration_env": env_name,
        **LOADED_MACHINE_ABORT,
        # Two linking sessions (the default is one): the suite keeps the side-by-side path,
        # each session on its own pages, under test; Molecule runs the default.
        "phase3_data_backfill_workers": 2,
        # No long-lived drain (a worker process and a cron entry of this machine's user) behind
        # every database the suite migrates: the tests that drain say so (tests/test_drain.py
        # starts the drain itself; transition_helpers.drain drains as the migration does).
        "drain_method": "none",
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
    }
    return {"all": {"children": {"databases": {"hosts": {TEST_HOST: host_vars}}}}}


def write_inventory(
    directory: Path, db: dict[str, Any], env_name: str = "local"
) -> Path:
    """Write the inventory as hosts.yml (JSON is valid YAML) into `directory`."""
    path = directory / "hosts.yml"
    path.write_text(json.dumps(inventory_data(db, env_name), indent=2) + "\n")
    return path


def _ansible_playbook() -> str:
    beside_python = Path(sys.executable).parent / "ansible-playbook"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("ansible-playbook")
    if found is None:
        msg = "ansible-playbook not found: activate the venv (.venv/bin first on PATH)."
        raise RuntimeError(msg)
    return found


def _ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ANSIBLE_FORCE_COLOR", None)
    env.update(
        {
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def run_playbook(
    playbook: str,
    db: dict[str, Any],
    extra_vars: dict[str, Any] | None = None,
    check: bool = False,
    env_name: str = "local",
    extra_args: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ansible-playbook from the repository root against the database `db`.

    `playbook` is relative to the repository root (or absolute). A temporary inventory
    holds one host in group `databases` with migration_db_* taken from `db` (keys host,
    port, user, password, dbname), migration_env=`env_name`, a local connection and this
    Python as interpreter. Extra vars go in as a JSON file (`-e @file`): types survive.
    Output is captured (text); the caller checks returncode.
    """
    return run_playbook_at(REPO_ROOT, playbook, db, extra_vars, check, env_name, extra_args)


def playbook_output(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr of a run, for assertion messages."""
    return f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


# --- additions: snapshots, database copies, repository copies, background playbooks -------

SYSTEM_SCHEMA_FILTER = "nspname !~ '^pg_' AND nspname <> 'information_schema'"
# collections/ holds the link that makes the copy the collection agency.pgmigrate (copied as a link).
REPO_COPY_ITEMS = ("ansible.cfg", "collections", "meta", "playbooks", "roles", "plugins", "files", "migrations")

# Each catalog query returns rows of (key, value); keys are unique within a query.
_CATALOG_QUERIES: dict[str, str] = {
    "schemas": f"""
        SELECT nspname, pg_get_userbyid(nspowner) || ' ' || coalesce(nspacl::text, '')
          FROM pg_namespace WHERE {SYSTEM_SCHEMA_FILTER}""",
    "relations": f"""
        SELECT n.nspname || '.' || c.relname,
               json_build_object('kind', c.relkind, 'owner', pg_get_userbyid(c.relowner),
                                 'rowsecurity', c.relrowsecurity,
                                 'forcerowsecurity', c.relforcerowsecurity,
                                 'options', c.reloptions, 'acl', c.relacl::text)::text
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM_SCHEMA_FILTER} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               json_build_object('type', format_type(a.atttypid, a.atttypmod),
                                 'notnull', a.attnotnull,
                                 'default', pg_get_expr(d.adbin, d.adrelid),
                                 'position', a.attnum)::text
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE {SYSTEM_SCHEMA_FILTER} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": f"""
        SELECT n.nspname || '.' || c.relname,
               json_build_object('definition', pg_get_indexdef(i.indexrelid),
                                 'valid', i.indisvalid, 'ready', i.indisready)::text
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM_SCHEMA_FILTER}""",
    "constraints": f"""
        SELECT n.nspname || '.' || coalesce(r.relname, '-') || '.' || con.conname,
               json_build_object('definition', pg_get_constraintdef(con.oid),
                                 'validated', con.convalidated)::text
          FROM pg_constraint con
          JOIN pg_namespace n ON n.oid = con.connamespace
          LEFT JOIN pg_class r ON r.oid = con.conrelid
         WHERE {SYSTEM_SCHEMA_FILTER}""",
    "views": f"""
        SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM_SCHEMA_FILTER} AND c.relkind IN ('v', 'm')""",
    "policies": """
        SELECT schemaname || '.' || tablename || '.' || policyname,
               json_build_object('permissive', permissive, 'roles', roles, 'cmd', cmd,
                                 'qual', qual, 'with_check', with_check)::text
          FROM pg_policies""",
    "table_grants": """
        SELECT table_schema || '.' || table_name || ' ' || grantee || ' ' || privilege_type,
               is_grantable
          FROM information_schema.role_table_grants
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')""",
    "functions": f"""
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '')
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {SYSTEM_SCHEMA_FILTER} AND p.prokind IN ('f', 'p', 'w')""",
    "triggers": f"""
        SELECT n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SYSTEM_SCHEMA_FILTER} AND NOT t.tgisinternal""",
    "default_acls": """
        SELECT pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '*') || ' ' || d.defaclobjtype::text,
               d.defaclacl::text
          FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "sequences": """
        SELECT schemaname || '.' || sequencename, coalesce(last_value::text, 'unused')
          FROM pg_sequences WHERE schemaname !~ '^pg_' AND schemaname <> 'information_schema'""",
    "roles": """
        SELECT rolname,
               json_build_object('super', rolsuper, 'login', rolcanlogin,
                                 'bypassrls', rolbypassrls, 'inherit', rolinherit)::text
          FROM pg_roles""",
    "database_settings": """
        SELECT coalesce(r.rolname, '*'), array_to_string(s.setconfig, ',')
          FROM pg_db_role_setting s
          JOIN pg_database d ON d.oid = s.setdatabase
          LEFT JOIN pg_roles r ON r.oid = s.setrole
         WHERE d.datname = current_database()""",
}


def db_snapshot(db: dict[str, Any]) -> dict[str, Any]:
    """The catalog and the data of database `db`, as plain comparable data.

    Catalog (outside pg_* and information_schema): schemas, relations (kind, owner, row
    security flags, options, ACL), columns (type, default, nullability), indexes
    (definition, validity), constraints (definition, validated), views, policies, table
    grants, functions, triggers, extensions, sequence positions, roles and per-database
    settings. Data: for every user table, its row count and an md5 of its rows in a fixed
    order. Two snapshots are equal iff nothing of that changed; roles are cluster-wide.
    """
    conn = connect(db)
    try:
        conn.set_session(readonly=True)
        snapshot: dict[str, Any] = {}
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for name, catalog_sql in _CATALOG_QUERIES.items():
                cur.execute(catalog_sql)
                snapshot[name] = dict(cur.fetchall())
            cur.execute(
                f"""SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE {SYSTEM_SCHEMA_FILTER} AND c.relkind IN ('r', 'p')
                     ORDER BY 1"""
            )
            tables = [row[0] for row in cur.fetchall()]
            data: dict[str, tuple[int, str | None]] = {}
            for table in tables:
                cur.execute(
                    f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) "
                    f"FROM {table} t"
                )
                count, digest = cur.fetchone()
                data[table] = (count, digest)
            snapshot["data"] = data
        conn.rollback()
        return snapshot
    finally:
        conn.close()


def snapshot_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two db_snapshot() results, one line per key (for messages)."""
    lines: list[str] = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section, {}), after.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                lines.append(f"{section}[{key}]: {old.get(key)!r} -> {new.get(key)!r}")
    return lines


def ledger_exists(db: dict[str, Any]) -> bool:
    """Whether the migration_ledger schema exists in `db`."""
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'migration_ledger')"
            )
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def query(db: dict[str, Any], sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement in its own committed transaction; return its rows (or [])."""
    conn = connect(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def clone_database(db: dict[str, Any], name: str) -> dict[str, Any]:
    """Create database `name` as a copy of `db` (CREATE DATABASE ... TEMPLATE).

    Nobody may be connected to `db` meanwhile. Returns `db` pointing at the copy.
    """
    admin = connect({**db, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                psycopg2.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    psycopg2.sql.Identifier(name), psycopg2.sql.Identifier(db["dbname"])
                )
            )
    finally:
        admin.close()
    return {**db, "dbname": name}


def drop_database(db: dict[str, Any]) -> None:
    """Drop database db['dbname'], disconnecting its sessions."""
    admin = connect({**db, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg2.sql.Identifier(db["dbname"])
                )
            )
    finally:
        admin.close()


def copy_repository(dest: Path) -> Path:
    """Copy what ansible-playbook needs (ansible.cfg, the collection link, playbooks, roles, plugins, files and
    migrations: the SQL and the manifest).

    Returns the copy's root, which run_playbook_at() and start_playbook() accept.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for item in REPO_COPY_ITEMS:
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(
                source, dest / item, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source, dest / item)
    return dest


def _playbook_command(
    repo_root: Path,
    workdir: Path,
    playbook: str,
    db: dict[str, Any],
    extra_vars: dict[str, Any] | None,
    check: bool,
    env_name: str,
    extra_args: list[str] | None,
) -> list[str]:
    cmd = [_ansible_playbook(), "-i", str(write_inventory(workdir, db, env_name))]
    if extra_vars:
        vars_file = workdir / "extra_vars.json"
        vars_file.write_text(json.dumps(extra_vars))
        cmd += ["-e", f"@{vars_file}"]
    if check:
        cmd.append("--check")
    return [*cmd, *(extra_args or []), str(repo_root / playbook)]


def _ansible_env_at(repo_root: Path) -> dict[str, str]:
    env = _ansible_env()
    env["ANSIBLE_CONFIG"] = str(repo_root / "ansible.cfg")
    return env


def run_playbook_at(
    repo_root: Path,
    playbook: str,
    db: dict[str, Any],
    extra_vars: dict[str, Any] | None = None,
    check: bool = False,
    env_name: str = "local",
    extra_args: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """run_playbook(), but from another copy of the repository (its ansible.cfg and cwd)."""
    workdir = Path(tempfile.mkdtemp(prefix="run-playbook-"))
    try:
        return subprocess.run(
            _playbook_command(
                repo_root, workdir, playbook, db, extra_vars, check, env_name, extra_args
            ),
            cwd=repo_root,
            env=_ansible_env_at(repo_root),
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT_S,
            check=False,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class RunningPlaybook:
    """An ansible-playbook started in the background by start_playbook().

    Its output goes to files in its temporary directory, so it never blocks on a full pipe.
    """

    def __init__(self, cmd: list[str], workdir: Path, repo_root: Path) -> None:
        self.cmd = cmd
        self.workdir = workdir
        self._stdout = (workdir / "stdout.txt").open("w+")
        self._stderr = (workdir / "stderr.txt").open("w+")
        self.proc = subprocess.Popen(
            cmd,
            cwd=repo_root,
            env=_ansible_env_at(repo_root),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            text=True,
        )

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.proc.poll()

    def wait(self, timeout: float = PLAYBOOK_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Wait for the end (killing it after `timeout` s); its captured output."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stdout.seek(0)
        self._stderr.seek(0)
        return subprocess.CompletedProcess(
            self.cmd, self.proc.returncode, self._stdout.read(), self._stderr.read()
        )

    def close(self) -> None:
        """Kill it if it still runs and remove its temporary files."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stdout.close()
        self._stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_playbook(
    playbook: str,
    db: dict[str, Any],
    extra_vars: dict[str, Any] | None = None,
    check: bool = False,
    env_name: str = "local",
    extra_args: list[str] | None = None,
    repo_root: Path = REPO_ROOT,
) -> RunningPlaybook:
    """Start ansible-playbook like run_playbook() does, without waiting for it.

    The caller must close() the result (after wait() to read the output).
    """
    workdir = Path(tempfile.mkdtemp(prefix="start-playbook-"))
    cmd = _playbook_command(
        repo_root, workdir, playbook, db, extra_vars, check, env_name, extra_args
    )
    return RunningPlaybook(cmd, workdir, repo_root)


def play_recap(output: str) -> dict[str, int]:
    """The counters of the (last) PLAY RECAP line of a playbook's stdout."""
    lines = [line for line in output.splitlines() if " : ok=" in line]
    if not lines:
        raise AssertionError(f"no PLAY RECAP in output:\n{output}")
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", lines[-1])}


__all__ += [
    "RunningPlaybook",
    "clone_database",
    "copy_repository",
    "db_snapshot",
    "drop_database",
    "ledger_exists",
    "play_recap",
    "playbook_output",
    "query",
    "run_playbook_at",
    "snapshot_diff",
    "start_playbook",
]
