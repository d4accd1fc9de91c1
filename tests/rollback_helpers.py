"""Helpers and session fixtures shared by the rollback, interruption and restore tests (not a
test module; test modules import the fixtures they use).

    rb_cluster (session)   a cluster of their own: roles are cluster-wide, and the tests prove
                           that a rollback drops the role `authenticated` only when nothing in
                           the cluster uses it, so no other test may leave one behind
    staged (session)       a database with the application's own extra tables, columns, view and
                           function, migrated phase by phase: a snapshot before and after each
                           phase, and templates of the states after phases 0 to 4 (none of them
                           uses `authenticated`); at the end it is fully migrated

    outside_migration(snapshot)  a db_snapshot() without the ledger and the backup tables, the
                                 two things a full rollback keeps on purpose
    fidelity_diff(before, after) what differs between two such snapshots, one line per key
    phase3_content(db)           what phase 3 populated, without surrogate ids and insertion
                                 times, so two runs can be compared
    ledger_rows(db), applied(db) the ledger's history and the phases it says are applied
    assert_consistent(db)        ledger and catalog agree, no invalid index, no duplicate rows
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    REPO_ROOT,
    _ansible_env_at,
    _playbook_command,
    clone_database,
    connect,
    db_snapshot,
    drop_database,
    make_cluster_tempdir,
    pgcluster,
    playbook_output,
    query,
    run_playbook,
)

MIGRATE = "playbooks/migrate.yml"
ROLLBACK = "playbooks/rollback.yml"
RESTORE = "playbooks/restore.yml"
KEPT_PREFIXES = ("migration_ledger.", "public.migration_backup_")
NEW_TABLES = ("orchestration_workflows", "workflow_executions", "handover_packages", "integration_events")
NEW_COLUMNS = ("marketplace_module_id", "installation_id", "activation_status", "activation_metadata")


def out_dirs_in(directory: Path) -> dict[str, Any]:
    """Extra vars sending backups and reports to `directory`, not into the repository; the
    monitoring's background sampler is off (it is not what these tests are about, and a killed
    run must not leave one behind)."""
    return {
        "migration_backup_dir": str(directory / "backups"),
        "migration_report_dir": str(directory / "reports"),
        "migration_monitor_enabled": False,
    }


def _kept(key: str) -> bool:
    bare = key.split(" ")[0]
    return bare == "migration_ledger" or bare.startswith(KEPT_PREFIXES)


def _default_acl_as_null(relation: str) -> str:
    """A relation's ACL that is exactly its owner's default privileges means the same as no ACL
    (PostgreSQL's acldefault; pg_dump writes neither). A table once granted to a role and
    revoked again keeps the explicit form - there is no SQL to set relacl back to null - so the
    comparison treats the two as the same."""
    entry = json.loads(relation)
    acl, owner = entry.get("acl"), entry.get("owner")
    if acl and re.fullmatch(r"\{(\w+)=arwdDxtm?/\1\}", acl) and acl.startswith("{" + owner + "="):
        entry["acl"] = None
    return json.dumps(entry, sort_keys=True)


def outside_migration(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without what a full rollback keeps on purpose: the ledger's schema and
    tables, and the backup tables the strategy keeps 7 days."""
    out = {section: {k: v for k, v in entries.items() if not _kept(k)}
           for section, entries in snapshot.items()}
    out["relations"] = {k: _default_acl_as_null(v) for k, v in out.get("relations", {}).items()}
    return out


def fidelity_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old, new = outside_migration(before), outside_migration(after)
    lines = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                lines.append(f"{section}[{key}]: {a.get(key)!r} -> {b.get(key)!r}")
    return lines


PHASE3_CONTENT = {
    "overrides": """
        SELECT md5(string_agg(concat_ws('|', id, marketplace_module_id, installation_id,
                                        activation_status, activation_metadata::text), ',' ORDER BY id))
          FROM client_app_overrides""",
    "workflows": """
        SELECT count(*), md5(string_agg(concat_ws('|', client_id, workflow_name, workflow_type,
                                                  workflow_definition::text, status, created_at),
                                        ',' ORDER BY client_id, workflow_type))
          FROM orchestration_workflows""",
    "packages": """
        SELECT count(*), md5(string_agg(concat_ws('|', hp.client_id, w.client_id, w.workflow_type,
                                                  hp.package_name, hp.installed_modules::text,
                                                  hp.module_configurations::text, hp.status),
                                        ',' ORDER BY hp.client_id))
          FROM handover_packages hp LEFT JOIN orchestration_workflows w ON w.id = hp.workflow_id""",
    "events": """
        SELECT count(*), md5(string_agg(concat_ws('|', event_type, event_source, event_payload::text,
                                                  correlation_id, status),
                                        ',' ORDER BY correlation_id, event_type))
          FROM integration_events""",
    "recorded": """
        SELECT table_name, count(*) FROM migration_ledger.phase3_inserted GROUP BY 1 ORDER BY 1""",
}


def phase3_content(db: dict[str, Any]) -> dict[str, Any]:
    """What phase 3 populated, comparable between two runs: every override's linkage, and the
    workflows, packages and events by their content (ids are gen_random_uuid(), packages and
    events are stamped now(): those differ by design)."""
    return {name: query(db, sql) for name, sql in PHASE3_CONTENT.items()}


def ledger_rows(db: dict[str, Any]) -> list[tuple[Any, ...]]:
    return query(db, "SELECT phase, direction, status FROM migration_ledger.history ORDER BY id")


def applied(db: dict[str, Any]) -> list[str]:
    """The phases the ledger says are applied (the latest successful record is an apply)."""
    rows = query(
        db,
        """SELECT phase FROM (SELECT DISTINCT ON (phase) phase, direction FROM migration_ledger.history
                               WHERE status = 'succeeded' ORDER BY phase, finished_at DESC, id DESC) s
            WHERE direction = 'apply' AND phase ~ '^[0-9]$' ORDER BY phase""",
    )
    return [r[0] for r in rows]


def unfinished(db: dict[str, Any]) -> list[tuple[str, str, str]]:
    return query(
        db,
        """SELECT phase, direction, status FROM (SELECT DISTINCT ON (phase) * FROM migration_ledger.history
                                                  ORDER BY phase, id DESC) s
            WHERE status <> 'succeeded' ORDER BY phase""",
    )


def catalog_phases(db: dict[str, Any]) -> dict[str, bool]:
    """Which phases' objects are in the catalog (and whole: valid, validated)."""
    row = query(
        db,
        """SELECT
             (SELECT count(*) FROM pg_class WHERE relname = ANY(%(tables)s) AND relkind = 'r') = 4
             AND (SELECT count(*) FROM pg_attribute WHERE attrelid = 'client_app_overrides'::regclass
                   AND attname = ANY(%(columns)s) AND NOT attisdropped) = 4
             AND (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE c.relname IN ('idx_cao_marketplace_module', 'idx_cao_installation')
                     AND i.indisvalid) = 2,
             (SELECT count(*) FROM pg_constraint WHERE conname IN ('fk_cao_marketplace_module',
                     'fk_cao_installation') AND convalidated) = 2,
             (SELECT count(*) FROM pg_class WHERE relname IN ('unified_client_dashboard',
                     'module_integration_view', 'workflow_progress_view')) = 3
             AND (SELECT count(*) FROM pg_policy) >= 2,
             (SELECT count(*) FROM pg_class WHERE relname = ANY(%(tables)s)) = 0
             AND (SELECT count(*) FROM pg_attribute WHERE attrelid = 'client_app_overrides'::regclass
                   AND attname = ANY(%(columns)s) AND NOT attisdropped) = 0,
             (SELECT count(*) FROM pg_constraint WHERE conname IN ('fk_cao_marketplace_module',
                     'fk_cao_installation')) = 0,
             (SELECT count(*) FROM pg_class WHERE relname IN ('unified_client_dashboard',
                     'module_integration_view', 'workflow_progress_view')) = 0""",
        {"tables": list(NEW_TABLES), "columns": list(NEW_COLUMNS)},
    )[0]
    return {"2": row[0], "4": row[1], "5": row[2], "2_absent": row[3], "4_absent": row[4], "5_absent": row[5]}


def invalid_indexes(db: dict[str, Any]) -> list[str]:
    return [r[0] for r in query(
        db,
        """SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE NOT (i.indisvalid AND i.indisready)""")]


def duplicates(db: dict[str, Any]) -> dict[str, int]:
    """Rows phase 3 would have inserted twice (only where the tables exist)."""
    if not query(db, "SELECT to_regclass('orchestration_workflows') IS NOT NULL")[0][0]:
        return {}
    row = query(
        db,
        """SELECT (SELECT count(*) FROM (SELECT client_id FROM orchestration_workflows
                                          WHERE workflow_type = 'client_onboarding'
                                          GROUP BY 1 HAVING count(*) > 1) s),
                  (SELECT count(*) FROM (SELECT client_id, workflow_id FROM handover_packages
                                          GROUP BY 1, 2 HAVING count(*) > 1) s),
                  (SELECT count(*) FROM (SELECT correlation_id FROM integration_events
                                          WHERE event_type = 'module_installed'
                                          GROUP BY 1 HAVING count(*) > 1) s)""",
    )[0]
    return {"workflows": row[0], "packages": row[1], "events": row[2]}


def assert_consistent(db: dict[str, Any]) -> None:
    """The ledger and the catalog agree, no index is invalid, nothing was inserted twice, and
    no run is left unfinished."""
    phases = applied(db)
    cat = catalog_phases(db)
    assert unfinished(db) == [], unfinished(db)
    assert invalid_indexes(db) == []
    assert all(v == 0 for v in duplicates(db).values()), duplicates(db)
    for phase in ("2", "4", "5"):
        if phase in phases:
            assert cat[phase], f"ledger says phase {phase} is applied, catalog disagrees: {cat}"
        else:
            assert cat[f"{phase}_absent"], f"ledger says phase {phase} is not applied, catalog disagrees: {cat}"
    if "3" in phases:
        linked = query(db, "SELECT count(*) FROM client_app_overrides WHERE marketplace_module_id IS NOT NULL")
        assert linked[0][0] > 0
    elif "2" in phases:
        assert query(db, "SELECT count(*) FROM orchestration_workflows")[0][0] == 0
        assert query(db, "SELECT count(*) FROM client_app_overrides WHERE marketplace_module_id IS NOT NULL"
                     " OR activation_status <> 'pending'")[0][0] == 0


# --- playbooks in the background, killed like an operator's laptop dying -------------------


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc (each process's parent: the 4th field of its stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class Background:
    """ansible-playbook in its own session (process group), so that killing it kills the
    modules it started too; output goes to files."""

    def __init__(self, playbook: str, db: dict[str, Any], extra_vars: dict[str, Any], workdir: Path,
                 repo_root: Path = REPO_ROOT) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.cmd = _playbook_command(repo_root, workdir, playbook, db, extra_vars, False, "local", None)
        self.out = (workdir / "stdout.txt").open("w+")
        self.proc = subprocess.Popen(
            self.cmd, cwd=repo_root, env=_ansible_env_at(repo_root), stdin=subprocess.DEVNULL,
            stdout=self.out, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL ansible-playbook and every process it started: its workers and the modules
        they run. Not only the process group: ansible's WorkerProcess calls setsid() (its own
        session), so a worker outlived a killpg, still running its module; the test's
        terminate_backends then failed its statement, and the module marked the ledger rows
        'failed' on a new connection instead of leaving them 'running' (a flaky
        test_full_rollback_killed_changes_nothing_until_rerun). Stopped first, so that none
        forks or reparents while the tree is read."""
        if self.running():
            seen: set[int] = set()
            for _ in range(3):
                tree = set(_process_tree(self.proc.pid)) - seen
                if not tree:
                    break
                for pid in tree:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                seen |= tree
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in seen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def output(self) -> str:
        self.out.flush()
        self.out.seek(0)
        return self.out.read()

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def close(self) -> None:
        if self.running():
            self.kill()
        self.out.close()


def wait_for(condition: Callable[[], Any], what: str, proc: Background | None = None,
             timeout: float = 240, every: float = 0.05) -> Any:
    """Poll `condition` until it returns something true; fail naming `what` (and the playbook's
    output if it ended meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and not proc.running():
            raise AssertionError(f"the playbook ended before {what}:\n{proc.output()[-6000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{proc.output()[-6000:]}" if proc else ""))


def backends(db: dict[str, Any], prefix: str = "pgmigrate") -> list[tuple[int, str, str]]:
    """(pid, application_name, wait_event_type) of the migration's sessions on the database."""
    return query(
        db,
        """SELECT pid, application_name, coalesce(wait_event_type, '') FROM pg_stat_activity
            WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()""",
        (db["dbname"], prefix + "%"),
    )


def terminate_backends(db: dict[str, Any], prefix: str = "pgmigrate") -> int:
    """Drop the migration's connections, as a server restart or a network cut would."""
    rows = query(
        db,
        """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()""",
        (db["dbname"], prefix + "%"),
    )
    return len(rows)


def holder(db: dict[str, Any], *statements: str) -> Any:
    """A session that ran `statements` in an open transaction (holding their locks)."""
    conn = connect(db)
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    return conn


# --- session fixtures -----------------------------------------------------------------------

STAGED_SCALE = 50

# What the application has besides the strategy's tables: extra columns with data, its own
# table (index, identity), a view and a function on the baseline tables. A rollback must leave
# all of it exactly as it was.
APPLICATION_EXTRAS = """
ALTER TABLE clients_enhanced ADD COLUMN legacy_ref text NOT NULL DEFAULT 'none', ADD COLUMN legacy_flag boolean;
ALTER TABLE client_app_overrides ADD COLUMN legacy_ref text NOT NULL DEFAULT 'none', ADD COLUMN legacy_flag boolean;
UPDATE clients_enhanced SET legacy_ref = 'ref-' || md5(id::text), legacy_flag = (hashtext(id::text) % 2 = 0);
UPDATE client_app_overrides SET legacy_ref = 'ref-' || md5(id::text), legacy_flag = (hashtext(id::text) % 3 = 0);
CREATE TABLE agency_notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, client_id uuid,
                           body text NOT NULL, created_at timestamptz DEFAULT now());
CREATE INDEX agency_notes_client ON agency_notes (client_id);
INSERT INTO agency_notes (client_id, body) SELECT id, 'note about ' || name FROM clients_enhanced;
CREATE VIEW client_app_summary AS
    SELECT c.id, c.name, count(o.id) AS apps FROM clients_enhanced c
      LEFT JOIN client_app_overrides o ON o.client_id = c.id GROUP BY c.id, c.name;
CREATE FUNCTION client_app_count(uuid) RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT count(*) FROM client_app_overrides WHERE client_id = $1 $$;
"""


@dataclass
class Staged:
    """The staged database (fully migrated), its snapshots and its stage templates."""

    cluster: dict[str, Any]
    db: dict[str, Any]
    dirs: dict[str, Any]
    snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)
    stages: dict[int, str] = field(default_factory=dict)
    content: dict[str, Any] = field(default_factory=dict)

    def clone(self, stage: int | None = None) -> dict[str, Any]:
        """A private copy: of a stage template (0..4), or of the migrated database (None)."""
        if stage is None:
            assert applied(self.db) == ["1", "2", "3", "4", "5", "6"], "the staged database is not migrated"
            source = self.db
        else:
            source = {**self.db, "dbname": self.stages[stage]}
        return clone_database(source, f"rb_{uuid.uuid4().hex[:10]}")


# Fixtures are named by `name=`: test modules import the functions (rb_cluster_fixture...)
# and ask for the fixtures (rb_cluster, staged) without shadowing the imported names.
@pytest.fixture(scope="session", name="rb_cluster")
def rb_cluster_fixture() -> Iterator[dict[str, Any]]:
    base = make_cluster_tempdir("pytest-rbcluster-")
    datadir = base / "data"
    try:
        yield pgcluster.start_cluster(datadir, password=f"rb-{secrets.token_hex(8)}")
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", name="staged")
def staged_fixture(rb_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    """Seed, add the application's extras, then migrate phase by phase (snapshots after each)."""
    name = "rb_staged"
    pgcluster.seed_database(rb_cluster, name, STAGED_SCALE)
    db = {**{k: rb_cluster[k] for k in ("host", "port", "user", "password")}, "dbname": name}
    query(db, APPLICATION_EXTRAS)
    dirs = out_dirs_in(tmp_path_factory.mktemp("staged"))
    staged = Staged(cluster=rb_cluster, db=db, dirs=dirs)
    try:
        staged.snapshots[0] = db_snapshot(db)
        staged.stages[0] = clone_database(db, f"{name}_0")["dbname"]
        for phase in range(1, 7):
            result = run_playbook(MIGRATE, db, {"phase": phase, **dirs})
            assert result.returncode == 0, playbook_output(result)
            staged.snapshots[phase] = db_snapshot(db)
            if phase <= 4:
                staged.stages[phase] = clone_database(db, f"{name}_{phase}")["dbname"]
            if phase == 3:
                staged.content = phase3_content(db)
        yield staged
    finally:
        for stage in staged.stages.values():
            drop_database({**db, "dbname": stage})
        drop_database(db)
