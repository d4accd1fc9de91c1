"""Signed sign-offs: with migration_signoff_signed, a production run needs every required role's
SSH signature (ssh-keygen -Y sign) of the run's plan, verified (ssh-keygen -Y verify) before
anything changes. Real ed25519 keys made here: a valid set runs; a missing role, a key the
allowed signers do not list (or list for another role) and a plan changed after signing are each
refused, the database byte for byte as it was."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    REPO_ROOT,
    copy_repository,
    db_snapshot,
    ledger_exists,
    playbook_output,
    plugin,
    query,
    run_playbook,
    run_playbook_at,
    snapshot_diff,
)

MIGRATE = "playbooks/migrate.yml"
APPROVE = "playbooks/approve.yml"
NAMESPACE = "pgmigrate-plan"
PHASE = "1"
SIGNERS = {"DBA": ["jane@example.com"], "Product owner": ["sam@example.com"]}


def make_key(directory: Path, principal: str) -> Path:
    """A fresh ed25519 key pair without a passphrase; returns the private key's path."""
    key = directory / principal.split("@")[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)],
                   check=True, capture_output=True)
    return key


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """jane (DBA) and sam (Product owner) are allowed signers; mallory's key is listed nowhere."""
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: make_key(directory, f"{name}@example.com") for name in ("jane", "sam", "mallory")}


@pytest.fixture
def signed_vars(tmp_path: Path, keys: dict[str, Path]) -> dict[str, Any]:
    """The inventory of a production database whose sign-offs are signed, and the run's directories."""
    allowed = tmp_path / "allowed_signers"
    # The allowed signers file as ssh-keygen reads it: principal, options, public key.
    allowed.write_text("".join(
        f'{name}@example.com namespaces="{NAMESPACE}" {Path(str(keys[name]) + ".pub").read_text()}'
        for name in ("jane", "sam")))
    return {
        "migration_signoff_signed": True,
        "migration_signoff_signers": SIGNERS,
        "migration_signoff_allowed_signers": str(allowed),
        "migration_backup_dir": str(tmp_path / "backups"),
        "migration_report_dir": str(tmp_path / "reports"),
    }


def write_plan(db: dict[str, Any], variables: dict[str, Any], repo: Path = REPO_ROOT) -> Path:
    result = run_playbook_at(repo, APPROVE, db, {"approval_action": "plan", "phase": PHASE, **variables},
                             env_name="production")
    assert result.returncode == 0, playbook_output(result)
    found = re.search(r"written to (\S+plan-testdb-([0-9a-f]{64})\.txt)", result.stdout)
    assert found, playbook_output(result)
    plan = Path(found.group(1))
    assert hashlib.sha256(plan.read_bytes()).hexdigest() == found.group(2)
    return plan


def sign(key: Path, plan: Path, namespace: str = NAMESPACE) -> Path:
    """The approver's step, as documented: ssh-keygen -Y sign writes PLAN.sig."""
    signature = Path(f"{plan}.sig")
    signature.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, str(plan)],
                   check=True, capture_output=True)
    return signature


def record(db: dict[str, Any], variables: dict[str, Any], role: str, signature: Path,
           repo: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return run_playbook_at(repo, APPROVE, db, {"phase": PHASE, "approval_role": role,
                                               "approval_signature_file": str(signature), **variables},
                           env_name="production")


def migrate(db: dict[str, Any], variables: dict[str, Any], repo: Path = REPO_ROOT,
            **extra: Any) -> subprocess.CompletedProcess[str]:
    return run_playbook_at(repo, MIGRATE, db, {"phase": PHASE, **variables, **extra}, env_name="production")


def assert_refused(db: dict[str, Any], result_of: Any, *needles: str) -> str:
    """The run fails, says each needle, and the database is byte for byte as it was."""
    before = db_snapshot(db)
    result = result_of()
    assert result.returncode != 0, playbook_output(result)
    for needle in needles:
        assert needle in result.stdout, f"{needle!r} not in the output\n{playbook_output(result)}"
    assert snapshot_diff(before, db_snapshot(db)) == [], "the refused run changed the database"
    return result.stdout


def test_plan_names_every_file_and_the_database_never_the_password(
        fresh_db: dict[str, Any], signed_vars: dict[str, Any]) -> None:
    """The plan: each SQL file of the requested phases with its sha256, the target's host, port
    and name, the phases; written without touching the database (and in check mode too)."""
    before = db_snapshot(fresh_db)
    plan = write_plan(fresh_db, signed_vars)
    text = plan.read_text()
    files = sorted((REPO_ROOT / "migrations/ht036/phase1/deploy").glob("*.sql"))
    assert files
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"file {path.relative_to(REPO_ROOT)} sha256={digest}\n" in text
    assert f"database host={fresh_db['host']} port={fresh_db['port']} dbname={fresh_db['dbname']}\n" in text
    assert "phases 1\n" in text and fresh_db["password"] not in text
    again = run_playbook(APPROVE, fresh_db, {"approval_action": "plan", "phase": PHASE, **signed_vars},
                         check=True, env_name="production")
    assert again.returncode == 0 and plan.name in again.stdout, playbook_output(again)
    assert plan.read_text() == text  # the same run, the same bytes
    assert snapshot_diff(before, db_snapshot(fresh_db)) == [] and not ledger_exists(fresh_db)


def test_valid_set_runs(fresh_db: dict[str, Any], signed_vars: dict[str, Any], keys: dict[str, Path]) -> None:
    plan = write_plan(fresh_db, signed_vars)
    for role, name in (("DBA", "jane"), ("Product owner", "sam")):
        signature = sign(keys[name], plan)
        result = record(fresh_db, signed_vars, role, signature)
        assert result.returncode == 0, playbook_output(result)
        assert f"by {name}@example.com" in result.stdout
    result = migrate(fresh_db, signed_vars)
    assert result.returncode == 0, playbook_output(result)
    [(approved_by,)] = query(fresh_db, "SELECT approved_by FROM migration_ledger.history "
                                       "WHERE phase = '1' AND status = 'succeeded'")
    assert re.fullmatch(r"DBA: jane@example\.com \(ED25519 SHA256:\S+\); "
                        r"Product owner: sam@example\.com \(ED25519 SHA256:\S+\)", approved_by), approved_by
    recorded = query(fresh_db, "SELECT role, name, plan_checksum FROM migration_ledger.approvals ORDER BY id")
    checksum = hashlib.sha256(plan.read_bytes()).hexdigest()
    assert recorded == [("DBA", "jane@example.com", checksum), ("Product owner", "sam@example.com", checksum)]


def test_missing_role_is_refused(fresh_db: dict[str, Any], signed_vars: dict[str, Any],
                                 keys: dict[str, Path]) -> None:
    plan = write_plan(fresh_db, signed_vars)
    assert record(fresh_db, signed_vars, "DBA", sign(keys["jane"], plan)).returncode == 0
    # A free-text approval does not stand in for a signature.
    assert_refused(fresh_db, lambda: migrate(fresh_db, signed_vars, approved_by="Sam Lee"),
                   "no signed sign-off recorded for Product owner",
                   "ssh-keygen -Y sign -f KEY -n pgmigrate-plan", "Nothing was changed")


def test_key_not_allowed_is_refused(fresh_db: dict[str, Any], signed_vars: dict[str, Any],
                                    keys: dict[str, Path]) -> None:
    plan = write_plan(fresh_db, signed_vars)
    assert record(fresh_db, signed_vars, "DBA", sign(keys["jane"], plan)).returncode == 0
    # approve.yml refuses to record a signature by a key the allowed signers do not list...
    mallory = sign(keys["mallory"], plan)
    mallory_signature = mallory.read_text()  # sign() below writes the same PLAN.sig again
    refused = assert_refused(fresh_db, lambda: record(fresh_db, signed_vars, "Product owner", mallory),
                             "is by a key that is not among the allowed signers", "Nothing was recorded")
    assert "sam@example.com" in refused
    # ...and by an allowed key of another role.
    assert_refused(fresh_db, lambda: record(fresh_db, signed_vars, "Product owner", sign(keys["jane"], plan)),
                   "is by jane@example.com, who may not sign for Product owner")
    # ...and a signature the right key made for something else (git's namespace).
    assert_refused(fresh_db, lambda: record(fresh_db, signed_vars, "Product owner",
                                            sign(keys["sam"], plan, namespace="git")),
                   "does not verify against this plan in namespace pgmigrate-plan", "namespace does not match")
    # Whoever holds the migration's login can write the ledger past approve.yml: the run checks again.
    query(fresh_db, """INSERT INTO migration_ledger.approvals
                         (stage, role, name, decision, environment, recorded_by, signature)
                       VALUES ('pre', 'Product owner', 'Sam Lee', 'go', 'production', 'someone', %s)""",
          (mallory_signature,))
    assert_refused(fresh_db, lambda: migrate(fresh_db, signed_vars),
                   "Product owner's signature (Sam Lee, recorded at", "not among the allowed signers",
                   "Nothing was changed")
    query(fresh_db, """INSERT INTO migration_ledger.approvals
                         (stage, role, name, decision, environment, recorded_by, signature)
                       VALUES ('pre', 'Product owner', 'Sam Lee', 'go', 'production', 'someone', %s)""",
          (sign(keys["jane"], plan).read_text(),))
    assert_refused(fresh_db, lambda: migrate(fresh_db, signed_vars),
                   "is by jane@example.com, who may not sign for Product owner", "Nothing was changed")


def test_plan_changed_after_signing_is_refused(fresh_db: dict[str, Any], signed_vars: dict[str, Any],
                                               keys: dict[str, Path], tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    plan = write_plan(fresh_db, signed_vars, repo)
    for role, name in (("DBA", "jane"), ("Product owner", "sam")):
        assert record(fresh_db, signed_vars, role, sign(keys[name], plan), repo).returncode == 0
    edited = sorted((repo / "migrations/ht036/phase1/deploy").glob("*.sql"))[0]
    edited.write_text(edited.read_text() + "\n-- edited after the sign-off\n")
    text = assert_refused(fresh_db, lambda: migrate(fresh_db, signed_vars, repo),
                          "DBA's signature (jane@example.com, recorded at", "is of another plan",
                          f"changed since it was signed: migrations/ht036/phase1/deploy/{edited.name} (sha256 ",
                          "Product owner's signature", "Nothing was changed")
    assert "approve.yml -e approval_action=plan -e phase=1" in text
    # Signing the plan of another run (phase=all) is no sign-off of this one either.
    assert_refused(fresh_db, lambda: migrate(fresh_db, signed_vars, repo, phase="all"), "is of another plan",
                   "phases (1 -> 1 2 3 4 5 6)")


def test_a_step_changed_in_the_manifest_after_signing_is_refused(
        fresh_db: dict[str, Any], signed_vars: dict[str, Any], keys: dict[str, Path], tmp_path: Path) -> None:
    """The sign-off records the plan's checksum, the one playbooks/plan.yml prints; it covers the
    manifest, so a lock changed in a step after signing refuses the run, naming the step."""
    repo = copy_repository(tmp_path / "repo")
    plan = write_plan(fresh_db, signed_vars, repo)
    checksum = hashlib.sha256(plan.read_bytes()).hexdigest()
    for role, name in (("DBA", "jane"), ("Product owner", "sam")):
        assert record(fresh_db, signed_vars, role, sign(keys[name], plan), repo).returncode == 0
    assert query(fresh_db, "SELECT DISTINCT plan_checksum FROM migration_ledger.approvals") == [(checksum,)]
    shown = run_playbook_at(repo, "playbooks/plan.yml", fresh_db, {"phase": PHASE, **signed_vars},
                            env_name="production")
    assert shown.returncode == 0 and f"Plan sha256 {checksum}" in shown.stdout, playbook_output(shown)
    manifest = repo / "migrations/ht036/manifest.yml"
    text = manifest.read_text()
    lock = "- {mode: ACCESS SHARE, table: client_app_overrides}"
    assert text.index(lock) < text.index('"2":')  # phase 1's step
    manifest.write_text(text.replace(lock, "- {mode: ROW SHARE, table: client_app_overrides}", 1))
    assert_refused(fresh_db, lambda: migrate(fresh_db, signed_vars, repo),
                   f"is of another plan (sha256 {checksum[:12]}",
                   "changed since it was signed: phase 1's step migrations/ht036/phase1/deploy/010_backup_tables.sql "
                   "(manifest entry ", "Nothing was changed")


def test_a_value_never_reads_as_another_line_of_the_plan() -> None:
    """A database name holding a line break or a space is quoted: no two targets print alike."""
    signoff = plugin("modules", "pgmigrate_signoff")
    params = {"db_host": "db.internal", "db_port": 5432, "phases": [], "sql_root": str(REPO_ROOT / "migrations/ht036")}
    plain = signoff.plan_text({**params, "db_name": "agency"})
    forged = signoff.plan_text({**params, "db_name": "agency\nfile ht036/x.sql sha256=0"})
    assert "dbname=agency\n" in plain
    assert 'dbname="agency\\nfile ht036/x.sql sha256=0"\n' in forged
    assert len(forged.splitlines()) == len(plain.splitlines()) == 3
    assert signoff.plan_changes(plain, forged).startswith("database (")
