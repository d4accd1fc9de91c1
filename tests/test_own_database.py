"""An operator's own database: what the login lacks is refused before anything changes, naming
the statement that fixes it; tables in a schema other than public (migration_db_schema) migrate
and roll back while same-named tables in public stay untouched.

The cluster is this module's own: roles are cluster-wide, and the refusal of phase 5 needs a
cluster without the role `authenticated`. Its superuser seeds the database and creates the
logins; the runs are the logins'.
"""

from __future__ import annotations

import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    clone_database,
    connect,
    db_snapshot,
    drop_database,
    ledger_exists,
    make_cluster_tempdir,
    pgcluster,
    playbook_output,
    query,
    run_playbook,
    snapshot_diff,
)
from rollback_helpers import applied, out_dirs_in

MIGRATE = "playbooks/migrate.yml"
ROLLBACK = "playbooks/rollback.yml"
SCALE = 20
APPLICATION_TABLES = ("clients_enhanced", "marketplace_modules", "module_installations",
                      "client_app_overrides", "client_deployments")


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    base = make_cluster_tempdir("pytest-owndb-")
    try:
        info = pgcluster.start_cluster(base / "data", password=f"su-{secrets.token_hex(8)}")
        pgcluster.seed_database(info, "agency", SCALE)
        yield {**info, "dbname": "agency"}
    finally:
        pgcluster.destroy_cluster(base / "data")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    copy = clone_database(cluster, f"own_{uuid.uuid4().hex[:10]}")
    try:
        yield copy
    finally:
        drop_database(copy)


def login(db: dict[str, Any], options: str = "") -> dict[str, Any]:
    """A new login (unique in the cluster) with CREATE on the database and on public."""
    name = f"op_{uuid.uuid4().hex[:8]}"
    password = f"pw-{secrets.token_hex(8)}"
    query(db, f"CREATE ROLE {name} LOGIN {options} PASSWORD %s", (password,))
    query(db, f'GRANT CREATE ON DATABASE "{db["dbname"]}" TO {name}')
    query(db, f"GRANT USAGE, CREATE ON SCHEMA public TO {name}")
    return {**db, "user": name, "password": password}


def give_tables(db: dict[str, Any], owner: str, schema: str = "public") -> None:
    for table in APPLICATION_TABLES:
        query(db, f"ALTER TABLE {schema}.{table} OWNER TO {owner}")


def assert_refused(db: dict[str, Any], run: Callable[[], Any], *needles: str) -> str:
    """Non-zero exit, every needle in the output, the database as it was, no ledger."""
    before = db_snapshot(db)
    result = run()
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, playbook_output(result)
    for needle in needles:
        assert needle in text, f"{needle!r} not in output\n{playbook_output(result)}"
    assert snapshot_diff(before, db_snapshot(db)) == [], "the refused run changed the database"
    assert not ledger_exists(db)
    return text


def _ok(result: Any) -> str:
    assert result.returncode == 0, playbook_output(result)
    return " ".join((result.stdout + result.stderr).split())


def test_login_that_reads_but_does_not_own_the_tables(db: dict[str, Any], tmp_path: Path) -> None:
    """Connects, reads every table, has CREATE on the schema and the database, owns nothing:
    refused by the preflight (before, phase 1 wrote its backup tables and the ledger, and phase 2
    failed with "must be owner of table client_app_overrides")."""
    reader = login(db)
    query(db, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader['user']}")
    owner = db["user"]
    assert_refused(
        db,
        lambda: run_playbook(MIGRATE, reader, {"phase": "all", **out_dirs_in(tmp_path)}),
        f"login {reader['user']} does not own table public.client_app_overrides (owner {owner})",
        f'ALTER TABLE "public"."client_app_overrides" OWNER TO "{reader["user"]}"',
        f'GRANT "{owner}" TO "{reader["user"]}"',
        "public.marketplace_modules",
        "public.module_installations",
        "Nothing was changed",
    )


def test_member_of_the_owning_role(db: dict[str, Any], tmp_path: Path) -> None:
    """As on Supabase or RDS: the tables belong to a role the login is a member of. Without
    INHERIT it is refused, naming ALTER ROLE ... INHERIT; with it, phases 1 and 2 run."""
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    query(db, f"CREATE ROLE {owner} NOLOGIN")
    give_tables(db, owner)
    member = login(db, "NOINHERIT")
    query(db, f"GRANT {owner} TO {member['user']}")
    dirs = out_dirs_in(tmp_path)
    assert_refused(
        db,
        lambda: run_playbook(MIGRATE, member, {"phase": "1", **dirs}),
        f"login {member['user']} is a member of role {owner}, which owns table public.client_app_overrides, "
        "without INHERIT",
        f'ALTER ROLE "{member["user"]}" INHERIT',
    )
    query(db, f"ALTER ROLE {member['user']} INHERIT")
    for phase in ("1", "2"):
        _ok(run_playbook(MIGRATE, member, {"phase": phase, **dirs}))
    assert applied(db) == ["1", "2"]


def test_phase5_needs_createrole_where_authenticated_is_absent(db: dict[str, Any], tmp_path: Path) -> None:
    """The owner of the tables, without CREATEROLE, in a cluster without `authenticated`: a run
    that would reach phase 5 is refused before phase 1; one of phases 1 to 4 is not."""
    assert query(db, "SELECT count(*) FROM pg_roles WHERE rolname = 'authenticated'") == [(0,)]
    owner = login(db)
    give_tables(db, owner["user"])
    dirs = out_dirs_in(tmp_path)
    assert_refused(
        db,
        lambda: run_playbook(MIGRATE, owner, {"phase": "all", **dirs}),
        f"role authenticated does not exist and login {owner['user']} may not create it",
        "CREATE ROLE authenticated NOLOGIN",
        f'ALTER ROLE "{owner["user"]}" CREATEROLE',
    )
    _ok(run_playbook(MIGRATE, owner, {"phase": "1", **dirs}))


def test_without_read_all_stats_the_monitoring_warns(db: dict[str, Any], tmp_path: Path) -> None:
    """The monitoring without pg_read_all_stats sees only the login's own sessions: a warning
    saying what is lost and the GRANT, never a refusal (check mode: nothing changes)."""
    owner = login(db, "CREATEROLE")
    give_tables(db, owner["user"])
    before = db_snapshot(db)
    text = _ok(run_playbook(MIGRATE, owner, {"phase": "all", **out_dirs_in(tmp_path)}, check=True))
    assert f"login {owner['user']} is not a member of pg_read_all_stats" in text, text
    assert f'GRANT pg_read_all_stats TO "{owner["user"]}"' in text, text
    assert snapshot_diff(before, db_snapshot(db)) == []
    query(db, f"GRANT pg_read_all_stats TO {owner['user']}")
    text = _ok(run_playbook(MIGRATE, owner, {"phase": "all", **out_dirs_in(tmp_path)}, check=True))
    assert "pg_read_all_stats" not in text


# --- tables in a schema other than public ---------------------------------------------------

DECOYS = """
CREATE TABLE public.{t} (LIKE app.{t} INCLUDING ALL);
INSERT INTO public.{t} SELECT * FROM app.{t} ORDER BY 1 LIMIT 3;
"""
NEW_TABLE_DECOYS = """
CREATE TABLE public.orchestration_workflows (id int PRIMARY KEY, note text);
INSERT INTO public.orchestration_workflows VALUES (1, 'not the migration''s');
CREATE TABLE public.integration_events (id int PRIMARY KEY, note text);
INSERT INTO public.integration_events VALUES (1, 'not the migration''s');
CREATE FUNCTION public.tenant_client_id() RETURNS uuid LANGUAGE sql STABLE AS 'SELECT NULL::uuid';
CREATE VIEW public.unified_client_dashboard AS SELECT id, name FROM public.clients_enhanced;
"""


@pytest.fixture
def app_db(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The application's tables in schema `app`, seeded there; `public` holds same-named decoys
    with a few rows, and decoys of what the migration creates (tables, a function, a view)."""
    name = f"app_{uuid.uuid4().hex[:10]}"
    target = {**cluster, "dbname": name}
    admin = connect({**cluster, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        admin.close()
    try:
        query(target, "CREATE SCHEMA app")
        query(target, f"ALTER DATABASE {name} SET search_path = app")
        pgcluster.seed_database(target, name, SCALE)
        query(target, f"ALTER DATABASE {name} RESET search_path")
        for table in APPLICATION_TABLES:
            query(target, DECOYS.format(t=table))
        query(target, NEW_TABLE_DECOYS)
        assert query(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'app'") == [(5,)]
        yield target
    finally:
        drop_database(target)
        # Roles are cluster-wide: the next test of the module finds none (the role the test
        # created has no grant left once its database is gone).
        query({**cluster, "dbname": "postgres"}, "DROP ROLE IF EXISTS authenticated")


def public_only(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The decoys' part of a snapshot: everything of schema public."""
    return {section: {k: v for k, v in entries.items() if k.startswith(("public.", "\"public\"."))}
            for section, entries in snapshot.items() if section != "roles"}


def outside_the_run(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What a full rollback restores: all but the ledger and the backup tables it keeps."""
    kept = ("migration_ledger", "app.migration_backup_")
    return {section: {k: v for k, v in entries.items() if not k.split(" ")[0].startswith(kept)}
            for section, entries in snapshot.items() if section != "roles"}


def test_unknown_schema_is_refused(app_db: dict[str, Any], tmp_path: Path) -> None:
    assert_refused(
        app_db,
        lambda: run_playbook(MIGRATE, app_db, {"phase": "all", "migration_db_schema": "apps",
                                               **out_dirs_in(tmp_path)}),
        "schema apps does not exist",
        "migration_db_schema",
    )


def test_tables_in_app_with_decoys_in_public(app_db: dict[str, Any], tmp_path: Path) -> None:
    """migration_db_schema=app: migrate all (phase 6's validator included), roll back the data,
    migrate again, roll back everything; the database is as it was, and public's decoys never
    changed (before, with search_path = app, public, phase 6 failed: relation
    "orchestration_workflows" does not exist)."""
    dirs = {**out_dirs_in(tmp_path), "migration_db_schema": "app"}
    # The tenant sessions reach app's tables only with USAGE on it: the schema owner's to grant.
    assert_refused(
        app_db,
        lambda: run_playbook(MIGRATE, app_db, {"phase": "all", **dirs}),
        "role authenticated, whose sessions phase 5's grants and policies serve, has no USAGE on schema app",
        'CREATE ROLE authenticated NOLOGIN, then GRANT USAGE ON SCHEMA "app" TO authenticated',
    )
    query(app_db, "CREATE ROLE authenticated NOLOGIN")
    query(app_db, "GRANT USAGE ON SCHEMA app TO authenticated")
    before = db_snapshot(app_db)
    decoys = public_only(before)
    _ok(run_playbook(MIGRATE, app_db, {"phase": "all", **dirs}))
    assert applied(app_db) == ["1", "2", "3", "4", "5", "6"]
    linked = query(app_db, "SELECT count(*) FROM app.client_app_overrides WHERE marketplace_module_id IS NOT NULL")
    assert linked[0][0] > 0
    assert query(app_db, "SELECT count(*) FROM app.orchestration_workflows") == [(SCALE,)]
    assert query(app_db, "SELECT to_regprocedure('app.tenant_client_id()') IS NOT NULL") == [(True,)]
    assert public_only(db_snapshot(app_db)) == decoys
    _ok(run_playbook(ROLLBACK, app_db, {"phase": "data", **dirs}))
    assert applied(app_db) == ["1", "2", "4", "5", "6"]
    assert public_only(db_snapshot(app_db)) == decoys
    _ok(run_playbook(ROLLBACK, app_db, {"phase": "all", **dirs}))
    assert applied(app_db) == []
    after = db_snapshot(app_db)
    assert public_only(after) == decoys
    assert snapshot_diff(outside_the_run(before), outside_the_run(after)) == []
