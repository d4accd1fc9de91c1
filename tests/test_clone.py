"""The clone of production into staging (roles/clone, playbooks/clone.yml, pgmigrate_clone), with
real clusters: a faithful copy (catalog, grants, policies, sequences, settings, every row), the
source identical before and after, an existing staging database replaced (its sessions ended),
refusals before anything changes, missing roles, the documented deterministic masking, a failure
that leaves staging as it was, and no password anywhere."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import rehearsal_helpers
from helpers import connect, db_snapshot, query, snapshot_diff
from rehearsal_helpers import (
    database_exists,
    databases_like,
    drop,
    host_vars,
    out_of,
    run_with_inventory,
    two_host_inventory,
)

# The staging server's fixtures (rehearsal_helpers), used by name.
staging_cluster = rehearsal_helpers.staging_cluster
staging_db = rehearsal_helpers.staging_db

CLONE = "playbooks/clone.yml"


def run_clone(source: dict[str, Any], staging: dict[str, Any], extra: dict[str, Any] | None = None,
              **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_with_inventory(CLONE, two_host_inventory(source, staging, **kwargs), extra,
                              extra_args=["-vvv"])


@pytest.fixture
def same_cluster_staging(fresh_db: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A staging database on the source's own cluster (same roles: snapshots compare fully)."""
    db = {**fresh_db, "dbname": f"{fresh_db['dbname']}_stg"}
    try:
        yield db
    finally:
        drop(db)


def enrich(db: dict[str, Any]) -> None:
    """Things a naive copy loses: a grant, a policy, a comment, a sequence position, a setting."""
    query(db, """CREATE SEQUENCE invoice_no START 1000;
                 SELECT setval('invoice_no', 4242);
                 COMMENT ON TABLE clients_enhanced IS 'the agency''s clients';
                 GRANT SELECT ON marketplace_modules TO PUBLIC;
                 ALTER TABLE client_deployments ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY deployments_read ON client_deployments FOR SELECT USING (true);
                 CREATE VIEW deployed AS SELECT client_id FROM client_deployments WHERE status = 'deployed'""")
    query(db, f'ALTER DATABASE "{db["dbname"]}" SET work_mem = \'8MB\'')


@pytest.mark.parametrize(("method", "jobs"), [("pipe", 2), ("pipe", 1), ("directory", 2)])
def test_clone_is_faithful_and_the_source_untouched(fresh_db: dict[str, Any], same_cluster_staging: dict[str, Any],
                                                    method: str, jobs: int) -> None:
    """Pipe with post-data in parallel, pipe as one stream, directory format: all exact copies."""
    enrich(fresh_db)
    before = db_snapshot(fresh_db)
    result = run_clone(fresh_db, same_cluster_staging, {"clone_method": method, "clone_jobs": jobs})
    assert result.returncode == 0, out_of(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [], "the source changed"
    assert snapshot_diff(before, db_snapshot(same_cluster_staging)) == [], "the clone differs from the source"
    assert "row counts match the source" in out_of(result)
    assert databases_like(fresh_db, "pgmigrate\\_%") == []


def test_clone_replaces_staging_ends_its_sessions_and_hides_passwords(
        fresh_db: dict[str, Any], staging_db: dict[str, Any]) -> None:
    """An existing staging database (on another server) is replaced: its tables are gone, its
    sessions ended; the passwords of both servers appear nowhere in the -vvv output."""
    admin = connect({**staging_db, "dbname": "postgres"})
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{staging_db["dbname"]}"')
    admin.close()
    query(staging_db, "CREATE TABLE left_over (i int)")
    session = connect(staging_db)
    before = db_snapshot(fresh_db)
    result = run_clone(fresh_db, staging_db)
    assert result.returncode == 0, out_of(result)
    assert "replacing the existing database" in out_of(result)
    assert query(staging_db, "SELECT to_regclass('left_over') IS NULL")[0][0]
    assert query(staging_db, "SELECT count(*) FROM client_app_overrides") == \
        query(fresh_db, "SELECT count(*) FROM client_app_overrides")
    with pytest.raises(psycopg2.OperationalError), session.cursor() as cur:
        cur.execute("SELECT 1")
    assert snapshot_diff(before, db_snapshot(fresh_db)) == []
    assert fresh_db["password"] not in out_of(result)
    assert staging_db["password"] not in out_of(result)
    assert databases_like(staging_db, "pgmigrate\\_%") == []


def test_missing_roles_are_refused_then_created_on_request(fresh_db: dict[str, Any],
                                                           staging_db: dict[str, Any]) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    query(fresh_db, f"CREATE ROLE {role} NOLOGIN; GRANT SELECT ON clients_enhanced TO {role}")
    try:
        refused = run_clone(fresh_db, staging_db)
        assert refused.returncode != 0
        assert role in out_of(refused) and "clone_create_missing_roles" in out_of(refused)
        assert not database_exists(staging_db), "a refused clone created the staging database"
        done = run_clone(fresh_db, staging_db, {"clone_create_missing_roles": True})
        assert done.returncode == 0, out_of(done)
        assert query(staging_db, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)) == [(False,)]
        assert query(staging_db, "SELECT has_table_privilege(%s, 'clients_enhanced', 'SELECT')", (role,)) == [(True,)]
    finally:
        drop(staging_db)
        query({**staging_db, "dbname": "postgres"}, f"DROP ROLE IF EXISTS {role}")
        query(fresh_db, f"REVOKE ALL ON clients_enhanced FROM {role}")
        query({**fresh_db, "dbname": "postgres"}, f"DROP ROLE IF EXISTS {role}")


def refusal_cases(source: dict[str, Any], staging: dict[str, Any]) -> dict[str, tuple[dict, dict, str]]:
    """name -> (inventory, extra vars, expected words)."""
    itself = two_host_inventory(source, source)
    spelled = two_host_inventory(source, {**source, "host": "localhost"})
    protected = two_host_inventory(source, staging, extra_hosts={
        "prod2": host_vars(staging, "production")})
    return {
        "the source itself": (itself, {}, "resolves to the staging database itself"),
        "the source, spelled localhost": (spelled, {}, "resolves to the staging database itself"),
        "a production target": (two_host_inventory(source, staging, staging_env="production"), {},
                                "never targets production"),
        "an unknown source": (two_host_inventory(source, staging, clone_source="nowhere"), {},
                              "is not a host of this inventory"),
        "no source": (two_host_inventory(source, staging, clone_source=None), {}, "set clone_source"),
        "another production database": (protected, {}, "is the database of prod2"),
        "a wrong masking rule": (two_host_inventory(source, staging),
                                 {"clone_mask_personal_data": True,
                                  "clone_mask_rules": [{"table": "clients_enhanced", "column": "phone",
                                                        "rule": "name"}]},
                                 "clients_enhanced.phone: no such column"),
        "a wrong method": (two_host_inventory(source, staging), {"clone_method": "rsync"}, "clone_method"),
    }


@pytest.mark.parametrize("case", ["the source itself", "the source, spelled localhost", "a production target",
                                  "an unknown source", "no source", "another production database",
                                  "a wrong masking rule", "a wrong method"])
def test_refusals_change_nothing(fresh_db: dict[str, Any], staging_db: dict[str, Any], case: str) -> None:
    inventory, extra, needle = refusal_cases(fresh_db, staging_db)[case]
    before = db_snapshot(fresh_db)
    result = run_with_inventory(CLONE, inventory, extra)
    assert result.returncode != 0, out_of(result)
    assert needle in out_of(result), out_of(result)
    if case != "a wrong method":  # that one is the role's argument spec: Ansible words it
        assert "Nothing was changed" in out_of(result)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [], "a refused clone changed the source"
    assert not database_exists(staging_db)


def masked_name(value: str, salt: str) -> str:
    return "Client " + hashlib.sha256(f"{salt}name:{value}".encode()).hexdigest()[:12]


def masked_email(value: str, salt: str) -> str:
    return "user-" + hashlib.sha256(f"{salt}email:{value.lower()}".encode()).hexdigest()[:16] + "@example.invalid"


def test_masking_follows_the_documented_rule(fresh_db: dict[str, Any], staging_db: dict[str, Any]) -> None:
    """Names and e-mail addresses (configured, and any text column named like email) become the
    documented hashes; NULL stays NULL; the same in every clone; the source keeps its data."""
    query(fresh_db, """UPDATE clients_enhanced SET email = NULL WHERE id = md5('client-3')::uuid;
                       ALTER TABLE client_deployments ADD COLUMN contact_email varchar(200);
                       UPDATE client_deployments SET contact_email = 'Ops' || client_id || '@Client.example'""")
    before = db_snapshot(fresh_db)
    salt = "pepper-for-tests"
    extra = {"clone_mask_personal_data": True, "clone_mask_salt": salt}
    first = run_clone(fresh_db, staging_db, extra)
    assert first.returncode == 0, out_of(first)
    assert salt not in out_of(first)
    original = {i: (n, e) for i, n, e in query(fresh_db, "SELECT id, name, email FROM clients_enhanced")}
    masked = {i: (n, e) for i, n, e in query(staging_db, "SELECT id, name, email FROM clients_enhanced")}
    assert masked.keys() == original.keys()
    for key, (name, email) in original.items():
        assert masked[key][0] == masked_name(name, salt)
        assert masked[key][1] == (None if email is None else masked_email(email, salt))
    contacts = query(staging_db, "SELECT contact_email, client_id FROM client_deployments")
    assert all(c == masked_email(f"Ops{client}@Client.example", salt) for c, client in contacts)
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [], "masking touched the source"
    second = run_clone(fresh_db, staging_db, extra)
    assert second.returncode == 0, out_of(second)
    again = {i: (n, e) for i, n, e in query(staging_db, "SELECT id, name, email FROM clients_enhanced")}
    assert again == masked, "the masking is not deterministic"


def test_a_failure_before_the_swap_leaves_staging_as_it_was(fresh_db: dict[str, Any],
                                                            staging_db: dict[str, Any]) -> None:
    """The masked e-mail addresses break a CHECK constraint of the source: the clone fails after
    the copy, and the staging database keeps what it held; no half-made database remains."""
    first = run_clone(fresh_db, staging_db)
    assert first.returncode == 0, out_of(first)
    query(staging_db, "CREATE TABLE marker (i int)")
    staging_before = db_snapshot(staging_db)
    query(fresh_db, "ALTER TABLE clients_enhanced ADD CONSTRAINT email_domain CHECK (email LIKE '%.example')")
    result = run_clone(fresh_db, staging_db, {"clone_mask_personal_data": True})
    assert result.returncode != 0
    assert "email_domain" in out_of(result)
    assert snapshot_diff(staging_before, db_snapshot(staging_db)) == []
    assert databases_like(staging_db, "pgmigrate\\_%") == []


def test_check_mode_clones_nothing(fresh_db: dict[str, Any], staging_db: dict[str, Any], tmp_path: Path) -> None:
    result = run_with_inventory(CLONE, two_host_inventory(fresh_db, staging_db), check=True)
    assert result.returncode == 0, out_of(result)
    assert "Check mode: the clone would replace" in out_of(result)
    assert not database_exists(staging_db)
