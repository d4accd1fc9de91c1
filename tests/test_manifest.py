"""HT-036's manifest (migrations/ht036/manifest.yml, docs/writing-a-migration.md) against the tree:
every SQL file of the phases is in exactly one step (as its file, a revert or a verify) and every
step's file exists; every file a phase role runs by name is in the manifest; kinds, stages and lock
modes are from the engine's vocabulary; a file's own header agrees with its kind. And what reads
it: the run's plan (roles/migration/tasks/plan.yml) names exactly the manifest's files,
playbooks/plan.yml prints and writes each step, and a missing or malformed manifest is refused
before anything changes. None of this needs a database."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO_ROOT, playbook_output, plugin, run_playbook

MANIFEST = REPO_ROOT / "migrations" / "ht036" / "manifest.yml"
SQL_ROOT = REPO_ROOT / "migrations" / "ht036"
ENGINE_VARS = REPO_ROOT / "roles" / "migration" / "vars" / "main.yml"
PHASE_ROLES = sorted((REPO_ROOT / "roles").glob("phase[1-6]_*"))
# No database is reached: the plan needs the inventory's names only.
NO_DB = {"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "user": "nobody", "password": ""}
# A file a phase role names: "{{ migration_sql_dir }}/phase3/deploy/005_linkage_rule.sql" or
# migration_sql_dir ~ '/phase4/verify/violations.sql'.
ROLE_FILE = re.compile(r"migration_sql_dir\s*(?:\}\}|~\s*')\s*/(phase[1-6]/[\w/]+\.sql)")
STAGES = {"first", "batches", "final"}


def load(path: Path = MANIFEST) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def vocabulary() -> tuple[list[str], list[str]]:
    engine = yaml.safe_load(ENGINE_VARS.read_text())
    return engine["__migration_step_kinds"], engine["__migration_lock_modes"]


def named_files(manifest: dict[str, Any]) -> list[str]:
    """Every file the manifest names, once per mention: step files, reverts, verifies."""
    names = []
    for phase in manifest["phases"].values():
        for step in phase["steps"]:
            names.append(step["file"])
            names += [r["file"] for r in step["revert"].get("files", [])]
            if "verify" in step:
                names.append(step["verify"]["file"])
    return names


def tree_files(root: Path = SQL_ROOT) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("phase[1-6]/**/*.sql"))


def tree_mismatch(manifest: dict[str, Any], root: Path = SQL_ROOT) -> list[str]:
    """What is wrong between the manifest and the SQL tree (empty: they agree)."""
    names = named_files(manifest)
    problems = [f"{n}: named {names.count(n)} times" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"{n}: in the manifest, not under {root}" for n in sorted(set(names)) if not (root / n).is_file()]
    problems += [f"{n}: under {root}, in no step of the manifest" for n in tree_files(root) if n not in names]
    return problems


def test_every_phase_file_is_in_exactly_one_step_and_every_step_file_exists() -> None:
    assert tree_mismatch(load()) == []


def test_a_file_added_to_a_phase_folder_and_not_to_the_manifest_fails(tmp_path: Path) -> None:
    root = tmp_path / "sql"
    shutil.copytree(SQL_ROOT, root)
    manifest = load()
    assert tree_mismatch(manifest, root) == []
    (root / "phase3" / "deploy" / "070_new.sql").write_text("SELECT 1;\n")
    assert tree_mismatch(manifest, root) == [f"phase3/deploy/070_new.sql: under {root}, in no step of the manifest"]
    # ... and a step whose file is gone, or a file named twice.
    (root / "phase3" / "deploy" / "070_new.sql").unlink()
    (root / "phase2" / "deploy" / "040_comments.sql").unlink()
    manifest["phases"]["4"]["steps"][0]["verify"] = {"file": "phase5/verify/access.sql", "runs": "after"}
    assert tree_mismatch(manifest, root) == [
        "phase5/verify/access.sql: named 2 times",
        f"phase2/deploy/040_comments.sql: in the manifest, not under {root}",
    ]


def test_every_file_a_phase_role_names_is_in_the_manifest() -> None:
    names = set(named_files(load()))
    found = {}
    for role in PHASE_ROLES:
        for tasks in role.glob("tasks/*.yml"):
            for name in ROLE_FILE.findall(tasks.read_text()):
                found[name] = tasks.relative_to(REPO_ROOT)
    # The pattern reads the roles as they are written today (phase 6's validator; phases 1 to 5
    # run their files by kind from the manifest: roles/migration/tasks/run_steps.yml, phase 3's vars).
    assert {"phase6/verify/checks.sql", "phase5/verify/access.sql"} <= set(found), found
    assert {n: str(f) for n, f in found.items() if n not in names} == {}


def test_phase_roles_and_graph_are_the_engines_phases() -> None:
    manifest = load()
    assert manifest["id"] == "ht036"
    phases = manifest["phases"]
    assert list(phases) == ["1", "2", "3", "4", "5", "6"]
    for number, phase in phases.items():
        assert (REPO_ROOT / "roles" / phase["role"] / "tasks" / "main.yml").is_file(), phase["role"]
        assert set(phase["requires"]) < set(phases) and number not in phase["requires"], number
        assert phase["title"] and phase["steps"], number


def test_kinds_stages_and_lock_modes_are_from_the_vocabulary() -> None:
    kinds, modes = vocabulary()
    bad = []
    for number, phase in load()["phases"].items():
        for step in phase["steps"]:
            where = f"phase {number} {step['file']}"
            bad += [f"{where}: kind {step.get('kind')!r}"] if step.get("kind") not in kinds else []
            entries = [step, *step["revert"].get("files", [])]
            bad += [f"{where}: lock {lock}" for e in entries for lock in e["locks"]
                    if lock.get("mode") not in modes or not lock.get("table")]
            bad += [f"{where}: revert {r['file']} kind {r.get('kind')!r} stage {r.get('stage')!r}"
                    for r in step["revert"].get("files", [])
                    if r.get("kind") not in kinds or r.get("stage") not in STAGES]
            # Exactly one of: its revert files, the step whose revert undoes it too, none with why.
            revert = step["revert"]
            forms = [k for k in ("files", "with", "none") if k in revert]
            if forms != ["files"] and not (forms == ["with"] and revert.get("why")) \
                    and not (forms == ["none"] and revert["none"]):
                bad.append(f"{where}: revert {revert}")
            if "with" in revert:
                partner = [s for s in phase["steps"] if s["file"] == revert["with"]]
                if not partner or "files" not in partner[0]["revert"]:
                    bad.append(f"{where}: revert with {revert['with']}, a step of this phase with revert files")
            if "verify" in step and step["verify"].get("runs") not in ("before", "after"):
                bad.append(f"{where}: verify {step['verify']}")
    assert bad == []


def test_a_files_header_agrees_with_its_kind() -> None:
    """pgmigrate_sql reads `-- pgmigrate: no-transaction` and `-- pgmigrate: batches`: the manifest
    says the same of the file."""
    wrong = []
    for phase in load()["phases"].values():
        for step in phase["steps"]:
            header = (SQL_ROOT / step["file"]).read_text().splitlines()[0]
            for kind in ("no-transaction", "batches"):
                if (header == f"-- pgmigrate: {kind}") != (step["kind"] == kind):
                    wrong.append(f"{step['file']}: header {header!r}, kind {step['kind']}")
    assert wrong == []


def test_the_engine_reads_the_migrations_tables_from_the_manifest() -> None:
    """HT-036's data lives in the manifest; the engine's names only point at it."""
    engine = yaml.safe_load(ENGINE_VARS.read_text())
    for name in ("__migration_phases", "__migration_prerequisites", "__migration_new_tables",
                 "__migration_owned_tables", "__migration_referenced_tables", "__migration_access_views",
                 "__migration_access_functions"):
        assert isinstance(engine[name], str) and "__migration_manifest." in engine[name], name
    text = ENGINE_VARS.read_text()
    assert "client_app_overrides" not in text and "unified_client_dashboard" not in text


# --- what reads it: the run's plan, playbooks/plan.yml, the refusals ---------------------------

def flat(text: str) -> str:
    """The output with every run of whitespace one space: the callback wraps long lines."""
    return re.sub(r"\s+", " ", text)


def _plan(tmp_path: Path, **extra: Any) -> tuple[Any, dict[str, Any]]:
    reports = tmp_path / "reports"
    result = run_playbook("playbooks/plan.yml", NO_DB, {"migration_report_dir": str(reports), **extra})
    files = list(reports.glob("*-plan-*.json"))
    return result, (json.loads(files[0].read_text()) if len(files) == 1 else {})


def test_plan_prints_and_writes_phase_2(tmp_path: Path) -> None:
    result, plan = _plan(tmp_path, phase="2")
    assert result.returncode == 0, playbook_output(result)
    out = flat(result.stdout)
    manifest = load()
    steps = manifest["phases"]["2"]["steps"]
    assert plan["migration"] == "ht036" and plan["phases"] == ["2"]
    assert [s["file"] for s in plan["steps"]] == [s["file"] for s in steps]
    for step, row in zip(steps, plan["steps"], strict=True):
        sha = hashlib.sha256((SQL_ROOT / step["file"]).read_bytes()).hexdigest()
        assert row["sha256"] == sha and row["kind"] == step["kind"] and row["locks"] == step["locks"], row
        assert row["revert"] == step["revert"], row
        assert f"{step['file']} sha256 {sha}" in out, out
    revert = "phase2/revert/010_drop_created.sql"
    drop = [row for row in plan["steps"] if row["file"] == "phase2/deploy/020_tables.sql"][0]
    assert drop["revert_sha256"] == {revert: hashlib.sha256((SQL_ROOT / revert).read_bytes()).hexdigest()}
    assert "kind: no-transaction" in out and "locks: ACCESS EXCLUSIVE client_app_overrides" in out, out
    assert f"revert: {revert} sha256 {drop['revert_sha256'][revert]}" in out, out
    assert "(final, transaction; locks: ACCESS EXCLUSIVE integration_events;" in out, out
    assert "revert: with phase2/deploy/020_tables.sql" in out, out
    assert "Phase 3" not in out and "phase3/" not in out, out


def test_plan_of_every_phase_names_every_step_and_verify(tmp_path: Path) -> None:
    result, plan = _plan(tmp_path)
    assert result.returncode == 0, playbook_output(result)
    manifest = load()
    assert plan["phases"] == list(manifest["phases"])
    assert [s["file"] for s in plan["steps"]] == [s["file"] for p in manifest["phases"].values() for s in p["steps"]]
    out = flat(result.stdout)
    violations = hashlib.sha256((SQL_ROOT / "phase4/verify/violations.sql").read_bytes()).hexdigest()
    assert f"verify: phase4/verify/violations.sql sha256 {violations}" in out and "(runs before)" in out, out
    assert "revert: phase3/revert/first/010_close_transition.sql" in out, out
    assert "revert: none (read-only)" in out, out


def test_the_signed_plan_names_exactly_the_manifests_files(tmp_path: Path) -> None:
    """approve.yml -e approval_action=plan (the sign-off's plan, and so the preflight's checksums,
    from the same roles/migration/tasks/plan.yml): the manifest's step files, in its order."""
    reports = tmp_path / "reports"
    result = run_playbook("playbooks/approve.yml", NO_DB,
                          {"approval_action": "plan", "phase": "all", "migration_report_dir": str(reports)})
    assert result.returncode == 0, playbook_output(result)
    [plan] = reports.glob("plan-*.txt")
    listed = re.findall(r"^file migrations/ht036/(\S+) sha256=", plan.read_text(), re.M)
    assert listed == [s["file"] for p in load()["phases"].values() for s in p["steps"]]


@pytest.mark.parametrize(("content", "needle"), [
    (None, "No migration manifest at"),
    ("id: x\nphases: [\n", "cannot be read"),
    ("id: x\nphases:\n  '1': {title: T, role: phase1_validate, requires: [],\n"
     "        steps: [{file: a.sql, kind: sometimes}]}\n", "with an unknown kind: a.sql"),
    # Without a role, a phase's steps run by kind (roles/migration/tasks/run_steps.yml), which
    # runs no backfill: refused when the manifest is loaded.
    ("id: x\nphases:\n  '1': {title: T, requires: [],\n"
     "        steps: [{file: a.sql, kind: transaction}, {file: b.sql, kind: backfill-plan}]}\n",
     "Steps only a role runs, in a phase without one: b.sql"),
])
def test_a_missing_or_malformed_manifest_is_refused_before_anything_changes(
        tmp_path: Path, content: str | None, needle: str) -> None:
    plan_dir = tmp_path / "migration"
    plan_dir.mkdir()
    if content is not None:
        (plan_dir / "manifest.yml").write_text(content)
    reports = tmp_path / "reports"
    result = run_playbook("playbooks/plan.yml", NO_DB,
                          {"migration_plan": str(plan_dir), "migration_report_dir": str(reports)})
    assert result.returncode != 0, playbook_output(result)
    assert needle in result.stdout + result.stderr, playbook_output(result)
    assert "Nothing was changed" in result.stdout + result.stderr, playbook_output(result)
    assert not list(reports.glob("*.json"))


def test_the_rollback_runs_the_manifests_reverts_by_stage_in_its_order(tmp_path: Path) -> None:
    """pgmigrate_rollback takes its files from the manifest (graph), by stage, in the manifest's
    order: for HT-036 the very files, in the very order, that the folders gave; a file in a revert
    folder that no step names is not run, and the manifest's order wins over the names' order."""
    rollback = plugin("modules", "pgmigrate_rollback")
    phases = load()["phases"]

    def folder(phase: str, sub: str) -> list[str]:
        found = (SQL_ROOT / f"phase{phase}" / "revert" / sub).glob("*.sql")
        return sorted(str(p.relative_to(SQL_ROOT)) for p in found)

    for phase in phases:
        got = {stage: [str(Path(f).relative_to(SQL_ROOT))
                       for f in rollback.stage_files(str(SQL_ROOT), phases, phase, stage)]
               for stage in STAGES}
        assert got == {"first": folder(phase, "first"), "batches": folder(phase, "batches"),
                       "final": folder(phase, "")}, phase
    assert rollback.check_revert_files(str(SQL_ROOT), phases, list(phases)) is None
    # Two final reverts listed in the other order run in that order.
    swapped = copy.deepcopy(phases)
    steps = swapped["3"]["steps"]
    first = next(s for s in steps if s["file"].endswith("007_transition_sync.sql"))
    later = next(s for s in steps if s["file"].endswith("030_workflows.sql"))
    first["revert"]["files"], later["revert"]["files"] = (
        [r for r in first["revert"]["files"] if r["stage"] != "final"] + later["revert"]["files"],
        [r for r in first["revert"]["files"] if r["stage"] == "final"])
    assert [Path(f).name for f in rollback.stage_files(str(SQL_ROOT), swapped, "3", "final")] == [
        "010_remove_inserted.sql", "005_remove_sync.sql"]
    # A revert file the manifest names that is not there, and a stage outside the vocabulary.
    root = tmp_path / "sql"
    shutil.copytree(SQL_ROOT, root)
    (root / "phase4" / "revert" / "010_foreign_keys.sql").unlink()
    assert "phase4/revert/010_foreign_keys.sql" in rollback.check_revert_files(str(root), phases, ["4"])
    assert rollback.check_revert_files(str(root), phases, ["5"]) is None
    bad = copy.deepcopy(phases)
    bad["5"]["steps"][0]["revert"]["files"][0]["stage"] = "sometime"
    assert "phase5/revert/010_access.sql" in rollback.check_revert_files(str(SQL_ROOT), bad, ["5"])
    assert "has no phase 7" in rollback.check_revert_files(str(SQL_ROOT), phases, ["7"])
