"""On a Supabase-shaped database: nothing the migration adds is open to those who should not have
it, Supabase's own linter finds nothing on it, and the full rollback puts privileges and policies
back exactly.

The cluster is this module's own (roles are cluster-wide). Its superuser creates what Supabase's
platform creates: the API roles anon, authenticated and service_role (NOLOGIN; service_role
BYPASSRLS), the `authenticator` login PostgREST connects as (NOINHERIT, allowed to SET ROLE to
the three), and a login like Supabase's `postgres` (CREATEROLE, no SUPERUSER, member of the three)
that owns the application's tables and runs the migration. As that login: Supabase's default
privileges on `public` (every new table, sequence and function granted to anon, authenticated
and service_role), the same grants on the application's tables, an `auth` schema whose jwt()
reads request.jwt.claims, and the application's own tables under row-level security by client.

API sessions are real ones: the authenticator logs in, SET ROLE, and sets request.jwt.claims as
PostgREST does.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from helpers import (
    REPO_ROOT,
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
from rollback_helpers import applied, fidelity_diff, out_dirs_in

LOGIN = "supa_admin"
SCALE = 20
DBLINT = REPO_ROOT / ".tools" / "dblint" / "node_modules" / ".bin" / "postgres-language-server"

PLATFORM_ROLES = f"""
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT PASSWORD %(authenticator)s;
GRANT anon, authenticated, service_role TO authenticator;
CREATE ROLE {LOGIN} LOGIN CREATEROLE CREATEDB PASSWORD %(login)s;
GRANT anon, authenticated, service_role TO {LOGIN};
GRANT pg_signal_backend, pg_read_all_stats TO {LOGIN};
"""

# As the login, what a Supabase project has before the migration.
PROJECT = """
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated, service_role;

CREATE SCHEMA auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                    nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;
CREATE FUNCTION auth.client_id() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(auth.jwt() -> 'app_metadata' ->> 'client_id', '')::uuid
$$;

ALTER TABLE clients_enhanced ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_client ON clients_enhanced TO authenticated USING (id = (SELECT auth.client_id()));
ALTER TABLE client_app_overrides ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_overrides ON client_app_overrides TO authenticated
    USING (client_id = (SELECT auth.client_id())) WITH CHECK (client_id = (SELECT auth.client_id()));
ALTER TABLE module_installations ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_installations ON module_installations TO authenticated
    USING (tenant_id = (SELECT auth.client_id()));
ALTER TABLE client_deployments ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_deployments ON client_deployments TO authenticated
    USING (client_id = (SELECT auth.client_id()));
ALTER TABLE marketplace_modules ENABLE ROW LEVEL SECURITY;
CREATE POLICY listings_for_users ON marketplace_modules FOR SELECT TO authenticated USING (true);
"""

NEW_TABLES = ("orchestration_workflows", "workflow_executions", "handover_packages", "integration_events")
NEW_VIEWS = ("unified_client_dashboard", "module_integration_view", "workflow_progress_view")
NEW_FUNCTIONS = ("tenant_client_id()", "tenant_sees_all()")


@pytest.fixture(scope="module")
def supabase() -> Iterator[dict[str, Any]]:
    """{"cluster": superuser info, "login": the login's info, "authenticator": password,
    "template": the seeded project}."""
    base = make_cluster_tempdir("pytest-supabase-")
    try:
        cluster = pgcluster.start_cluster(base / "data", password=f"su-{secrets.token_hex(8)}")
        passwords = {"login": f"login-{secrets.token_hex(8)}", "authenticator": f"auth-{secrets.token_hex(8)}"}
        query({**cluster, "dbname": "postgres"}, PLATFORM_ROLES, passwords)
        login = {**{k: cluster[k] for k in ("host", "port")}, "user": LOGIN, "password": passwords["login"]}
        pgcluster.seed_database(login, "project", SCALE)
        template = {**login, "dbname": "project"}
        query(template, PROJECT)
        yield {"cluster": cluster, "login": login, "authenticator": passwords["authenticator"],
               "template": template}
    finally:
        pgcluster.destroy_cluster(base / "data")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def project(supabase: dict[str, Any]) -> Iterator[dict[str, Any]]:
    db = clone_database(supabase["template"], f"s_{uuid.uuid4().hex[:10]}")
    # What PostgREST serves, set by the platform (a database setting is not copied with the
    # template); the linter's exposed-schema rules read it.
    query({**supabase["cluster"], "dbname": db["dbname"]},
          f"ALTER DATABASE {db['dbname']} SET pgrst.db_schemas = 'public, graphql_public'")
    try:
        yield db
    finally:
        drop_database({**supabase["cluster"], "dbname": db["dbname"]})


def _ok(result: Any) -> str:
    assert result.returncode == 0, playbook_output(result)
    return result.stdout + result.stderr


def _api(supabase: dict[str, Any], db: dict[str, Any], role: str, client: str | None) -> Any:
    """A session as PostgREST opens one: the authenticator logs in, SET ROLE, the JWT's claims."""
    conn = connect({**db, "user": "authenticator", "password": supabase["authenticator"]})
    claims: dict[str, Any] = {"role": role}
    if client:
        claims["app_metadata"] = {"client_id": client}
    with conn.cursor() as cur:
        cur.execute(f"SET ROLE {role}")
        cur.execute("SELECT set_config('request.jwt.claims', %s, false)", (json.dumps(claims),))
    conn.commit()
    return conn


def _try(conn: Any, statement: str, args: Any = None) -> tuple[str, Any]:
    """('denied', None), or ('rows', rows) for a read, ('count', rowcount) for a write; each
    statement in its own transaction, rolled back, so nothing is ever written for good."""
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            result = ("rows", cur.fetchall()) if cur.description else ("count", cur.rowcount)
    except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.CheckViolation) as exc:
        result = ("denied", str(exc).splitlines()[0])
    conn.rollback()
    return result


def _two_clients(db: dict[str, Any]) -> list[str]:
    rows = query(db, """SELECT w.client_id::text FROM orchestration_workflows w
                         WHERE EXISTS (SELECT 1 FROM handover_packages h WHERE h.client_id = w.client_id)
                           AND EXISTS (SELECT 1 FROM integration_events e
                                         JOIN module_installations mi ON mi.id = e.correlation_id
                                        WHERE mi.tenant_id = w.client_id)
                         GROUP BY 1 ORDER BY 1 LIMIT 2""")
    assert len(rows) == 2, "the seed has two clients with workflows, packages and events"
    return [r[0] for r in rows]


def _client_of(relation: str) -> str:
    """How a row of each new relation names its client."""
    return {
        "workflow_executions": "(SELECT client_id FROM orchestration_workflows w WHERE w.id = workflow_id)",
        "integration_events": "(SELECT tenant_id FROM module_installations m WHERE m.id = correlation_id)",
    }.get(relation, "client_id")


def _anon_sees_and_writes_nothing(supabase: dict[str, Any], db: dict[str, Any]) -> None:
    conn = _api(supabase, db, "anon", None)
    try:
        for relation in NEW_TABLES + NEW_VIEWS:
            verdict, _ = _try(conn, f"SELECT * FROM {relation} LIMIT 1")
            assert verdict == "denied", f"anon may read {relation}"
        for table in NEW_TABLES:
            for statement in (f"UPDATE {table} SET id = id", f"DELETE FROM {table}",
                              f"INSERT INTO {table} SELECT * FROM {table} LIMIT 0",
                              f"TRUNCATE {table}"):
                verdict, _ = _try(conn, statement)
                assert verdict == "denied", f"anon may run {statement}"
        for function in NEW_FUNCTIONS:
            verdict, _ = _try(conn, f"SELECT {function.replace('()', '')}()")
            assert verdict == "denied", f"anon may call {function}"
        for function in ("migration_ledger.phase3_linkage(NULL, NULL, NULL)",
                         "migration_ledger.revoke_default_grants(NULL)",
                         "migration_ledger.phase3_listings", "migration_ledger.phase3_installed_listings"):
            verdict, _ = _try(conn, f"SELECT * FROM {function}")
            assert verdict == "denied", f"anon may call {function}"
    finally:
        conn.close()


def _clients_see_and_write_their_own(supabase: dict[str, Any], db: dict[str, Any], clients: list[str]) -> None:
    for me, other in (clients, clients[::-1]):
        conn = _api(supabase, db, "authenticated", me)
        try:
            # Granted by the strategy: own rows only, read and written.
            for relation in ("orchestration_workflows", "handover_packages", "unified_client_dashboard"):
                verdict, rows = _try(conn, f"SELECT client_id::text, count(*) FROM {relation} GROUP BY 1")
                assert verdict == "rows" and dict(rows).keys() == {me}, f"{relation} as {me}: {rows}"
            verdict, count = _try(conn, "UPDATE orchestration_workflows SET status = status")
            assert verdict == "count" and count >= 1
            verdict, count = _try(conn, "UPDATE orchestration_workflows SET status = status WHERE client_id = %s",
                                  (other,))
            assert (verdict, count) == ("count", 0), "a client updated another's workflow"
            verdict, count = _try(conn, "DELETE FROM orchestration_workflows WHERE client_id = %s", (other,))
            assert (verdict, count) == ("count", 0), "a client deleted another's workflow"
            verdict, _ = _try(conn, """INSERT INTO orchestration_workflows (workflow_name, workflow_type, client_id)
                                       VALUES ('x', 'probe', %s)""", (other,))
            assert verdict == "denied", "a client inserted a workflow for another"
            verdict, count = _try(conn, """INSERT INTO orchestration_workflows (workflow_name, workflow_type, client_id)
                                           VALUES ('x', 'probe', %s)""", (me,))
            assert (verdict, count) == ("count", 1), "a client cannot insert its own workflow"
            # Not granted: nothing at all, not even its own rows.
            for relation in ("workflow_executions", "integration_events", "module_integration_view",
                             "workflow_progress_view"):
                verdict, _ = _try(conn, f"SELECT * FROM {relation} LIMIT 1")
                assert verdict == "denied", f"authenticated may read {relation}"
            for statement in ("UPDATE handover_packages SET status = status", "DELETE FROM handover_packages",
                              "UPDATE workflow_executions SET status = status",
                              "DELETE FROM integration_events"):
                verdict, _ = _try(conn, statement)
                assert verdict == "denied", f"authenticated may run {statement}"
        finally:
            conn.close()


def _policies_isolate_once_granted(supabase: dict[str, Any], db: dict[str, Any], clients: list[str]) -> None:
    """workflow_executions and integration_events: phase 5 grants them to no one, but their
    policies are there for an operator who does: granted inside a transaction (rolled back),
    each client reads, changes and adds only its own rows."""
    conn = connect({**supabase["cluster"], "dbname": db["dbname"]})
    try:
        for me, other in (clients, clients[::-1]):
            with conn.cursor() as cur:
                cur.execute("""INSERT INTO workflow_executions (workflow_id, step_key)
                               SELECT id, 'probe' FROM orchestration_workflows WHERE client_id = ANY(%s::uuid[])""",
                            (clients,))
                cur.execute("SELECT id FROM orchestration_workflows WHERE client_id = %s LIMIT 1", (other,))
                others_workflow = cur.fetchone()[0]
                cur.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON workflow_executions, integration_events"
                            " TO authenticated")
                cur.execute("SELECT set_config('request.jwt.claims', %s, true)",
                            (json.dumps({"role": "authenticated", "app_metadata": {"client_id": me}}),))
                cur.execute("SET LOCAL ROLE authenticated")
                for table in ("workflow_executions", "integration_events"):
                    cur.execute(f"SELECT {_client_of(table)}::text, count(*) FROM {table} GROUP BY 1")
                    seen = dict(cur.fetchall())
                    assert seen.keys() == {me}, f"{table} as {me}: {seen}"
                    cur.execute(f"UPDATE {table} SET status = status WHERE {_client_of(table)} = %s", (other,))
                    assert cur.rowcount == 0, f"{table}: {me} updated another client's rows"
                    cur.execute(f"DELETE FROM {table} WHERE {_client_of(table)} = %s", (other,))
                    assert cur.rowcount == 0, f"{table}: {me} deleted another client's rows"
                cur.execute("SAVEPOINT other")
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute("INSERT INTO workflow_executions (workflow_id, step_key) VALUES (%s, 'probe')",
                                (others_workflow,))
                cur.execute("ROLLBACK TO SAVEPOINT other")
            conn.rollback()
    finally:
        conn.close()


def _ours(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """schema.name of every relation and function the migration added (functions without their
    arguments, as the linter names them)."""
    relations = set(after["relations"]) - set(before["relations"])
    functions = {key.split("(")[0] for key in set(after["functions"]) - set(before["functions"])}
    return relations | {f if "." in f else "public." + f for f in functions}


def dblint(db: dict[str, Any]) -> list[dict[str, Any]]:
    """Supabase's linter (postgres-language-server dblint, tools/ensure-dblint.sh) on `db`: its
    diagnostics, as JSON."""
    assert DBLINT.exists(), "run tools/ensure-dblint.sh (make pytest does)"
    url = f"postgresql://{db['user']}:{db['password']}@{db['host']}:{db['port']}/{db['dbname']}"
    result = subprocess.run([str(DBLINT), "dblint", "--connection-string", url, "--reporter", "json",
                             "--max-diagnostics", "none", "--colors", "off"],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout).get("diagnostics", [])


def security_findings_on(findings: list[dict[str, Any]], ours: set[str]) -> set[tuple[str, str]]:
    """(rule, object) of each security finding on one of `ours`; the baseline's own objects (an
    unindexed foreign key of the application's, say) are not the migration's doing."""
    found = set()
    for finding in findings:
        if "/security/" not in finding.get("category", ""):
            continue
        named = set(re.findall(r"`([\w.]+)`", finding.get("message", "").replace("\\", "")))
        found |= {(finding["category"], name) for name in named if name in ours}
    return found


def test_api_roles_linter_and_rollback(supabase: dict[str, Any], project: dict[str, Any], tmp_path: Any) -> None:
    dirs = out_dirs_in(tmp_path)
    before = db_snapshot(project)
    _ok(run_playbook("playbooks/migrate.yml", project, {"phase": "all", **dirs}))
    assert applied(project) == ["1", "2", "3", "4", "5", "6"]
    after = db_snapshot(project)
    clients = _two_clients(project)

    _anon_sees_and_writes_nothing(supabase, project)
    _clients_see_and_write_their_own(supabase, project, clients)
    _policies_isolate_once_granted(supabase, project, clients)

    # A canary, not ours (made after `after`, dropped before the rollback): the linter must report
    # it, or an empty answer would say nothing.
    query(project, "CREATE FUNCTION lint_canary() RETURNS integer LANGUAGE sql AS 'SELECT 1'")
    findings = dblint(project)
    query(project, "DROP FUNCTION lint_canary()")
    assert security_findings_on(findings, {"public.lint_canary"}) == {
        ("splinter/security/functionSearchPathMutable", "public.lint_canary")}, "the linter ran its security rules"
    # Nothing of ours: no finding of its security rules on any relation or function the migration
    # created (the linkage rule's sets are views, its functions have a fixed search_path: phase 3's
    # 005, docs/design.md's departures).
    assert security_findings_on(findings, _ours(before, after)) == set(), json.dumps(findings, indent=1)

    _ok(run_playbook("playbooks/rollback.yml", project, {"phase": "all", **dirs}))
    assert applied(project) == []
    assert fidelity_diff(before, db_snapshot(project)) == []


def test_the_access_check_fails_the_run(supabase: dict[str, Any], project: dict[str, Any], tmp_path: Any) -> None:
    """An operator's grant to anon on a table the migration created, made while the migration is
    under way: phase 5 and phase 6's validator each refuse to pass, naming the table, the role and
    the privilege; phase 5 passes once it is revoked."""
    dirs = out_dirs_in(tmp_path)
    _ok(run_playbook("playbooks/migrate.yml", project, {"phase": "all", **dirs}))
    _ok(run_playbook("playbooks/rollback.yml", project, {"phase": "6", **dirs}))
    _ok(run_playbook("playbooks/rollback.yml", project, {"phase": "5", **dirs}))
    grant = "GRANT SELECT ON integration_events TO anon"

    query(project, grant)
    result = run_playbook("playbooks/migrate.yml", project, {"phase": "5", **dirs})
    assert result.returncode != 0, playbook_output(result)
    assert "Phase 5's access check failed: access.privileges: integration_events: anon SELECT" in result.stdout, \
        playbook_output(result)
    assert applied(project) == ["1", "2", "3", "4"]

    query(project, "REVOKE SELECT ON integration_events FROM anon")
    _ok(run_playbook("playbooks/migrate.yml", project, {"phase": "5", **dirs}))

    query(project, grant)
    result = run_playbook("playbooks/migrate.yml", project, {"phase": "6", **dirs})
    assert result.returncode != 0, playbook_output(result)
    assert "access.privileges" in result.stdout and "integration_events: anon SELECT" in result.stdout, \
        playbook_output(result)
    assert applied(project) == ["1", "2", "3", "4", "5"]
