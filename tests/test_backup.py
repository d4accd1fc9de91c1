"""The verified backup (roles/backup, playbooks/backup.yml, pgmigrate_backup), against real
databases: the manifest (exact row counts taken in the dump's own snapshot, size, sha256, server
version, time), pg_restore --list, the full test restore, the directory format with parallel jobs,
--lock-wait-timeout, owner-only permissions, retention that never removes the ledger's archive,
refusals before anything is written, and no password anywhere."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from helpers import connect, playbook_output, plugin, query, run_playbook
from rehearsal_helpers import databases_like, out_of

BACKUP = "playbooks/backup.yml"
MIGRATE = "playbooks/migrate.yml"


dump_utils = plugin("module_utils", "pgmigrate_dump")
backup_module = plugin("modules", "pgmigrate_backup")


@pytest.fixture
def out(tmp_path: Path) -> dict[str, str]:
    return {"backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports"),
            "migration_backup_dir": str(tmp_path / "backups")}


def manifests(out: dict[str, str]) -> list[dict[str, Any]]:
    files = sorted(Path(out["backup_dir"]).rglob("*.manifest.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(f.read_text()) for f in files]


def table_counts(db: dict[str, Any]) -> dict[str, int]:
    tables = query(db, """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""")
    return {f"{s}.{t}": query(db, f'SELECT count(*) FROM "{s}"."{t}"')[0][0] for s, t in tables}


def backup(db: dict[str, Any], out: dict[str, str], **extra: Any) -> subprocess.CompletedProcess[str]:
    return run_playbook(BACKUP, db, {**out, **extra}, extra_args=["-vvv"])


def test_manifest_is_exact_and_files_are_private(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    """Custom format by default; the manifest names database, server version, size, sha256, time
    and the exact row count of every table; archive and manifest 0600, directories 0700."""
    result = backup(fresh_db, out)
    assert result.returncode == 0, playbook_output(result)
    [m] = manifests(out)
    archive = Path(m["path"])
    assert m["format"] == "custom" and archive.is_file() and archive.suffix == ".dump"
    assert m["database"] == fresh_db["dbname"]
    assert m["server_version"] == query(fresh_db, "SHOW server_version")[0][0]
    assert m["size_bytes"] == archive.stat().st_size > 0
    assert m["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    counts = table_counts(fresh_db)
    assert m["row_counts_all"] == counts and m["row_counts"]["client_app_overrides"] > 0
    # The restore's contract since the first manifest: public's tables by bare name.
    assert m["row_counts"] == {k.removeprefix("public."): n for k, n in counts.items() if k.startswith("public.")}
    assert m["row_counts_exact"] is True and m["toc_entries"] > 0 and m["created_at"].endswith("Z")
    assert m["verified"] == {"pg_restore_list": True, "test_restore": None}
    for path in (archive, Path(f"{archive}.manifest.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (archive.parent, archive.parent.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    listing = subprocess.run(["pg_restore", "--list", str(archive)], capture_output=True, text=True, check=True)
    assert "TABLE DATA public clients_enhanced" in listing.stdout
    # -vvv prints module arguments: the password must be masked everywhere.
    assert fresh_db["password"] not in out_of(result)
    assert fresh_db["password"] not in Path(f"{archive}.manifest.json").read_text()


def test_row_counts_are_those_of_the_dumps_snapshot(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    """While an application inserts rows without pause, the manifest's counts are exactly what the
    archive holds: the full test restore (into a scratch database, dropped afterwards) matches."""
    stop = threading.Event()
    inserted = [0]

    def application() -> None:
        conn = connect(fresh_db)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("""INSERT INTO client_app_overrides (client_id, app_name, enabled)
                               VALUES (md5('client-1')::uuid, 'app_01', true)""")
                inserted[0] += 1
                time.sleep(0.002)
        conn.close()

    before = query(fresh_db, "SELECT count(*) FROM client_app_overrides")[0][0]
    writer = threading.Thread(target=application, daemon=True)
    writer.start()
    try:
        result = backup(fresh_db, out, backup_verify_restore=True)
    finally:
        stop.set()
        writer.join(10)
    assert result.returncode == 0, playbook_output(result)
    after = query(fresh_db, "SELECT count(*) FROM client_app_overrides")[0][0]
    [m] = manifests(out)
    assert before < m["row_counts"]["client_app_overrides"] < after, "the dump ran while rows were inserted"
    restored = m["verified"]["test_restore"]
    assert restored["matched"] is True and restored["tables"] == len(m["row_counts_all"])
    assert restored["rows"] == sum(m["row_counts_all"].values())
    assert databases_like(fresh_db, "pgmigrate_verify_%") == []


def test_directory_format_with_parallel_jobs(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    """backup_format=directory dumps with backup_jobs jobs; its sha256 follows the documented
    rule (the sha256sum listing of its files, by name); the test restore matches."""
    result = backup(fresh_db, out, backup_format="directory", backup_jobs=2, backup_verify_restore=True)
    assert result.returncode == 0, playbook_output(result)
    [m] = manifests(out)
    archive = Path(m["path"])
    assert m["format"] == "directory" and m["jobs"] == 2 and archive.is_dir() and archive.suffix == ".dir"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    names = sorted(p.name for p in archive.iterdir())
    assert all(stat.S_IMODE((archive / n).stat().st_mode) == 0o600 for n in names)
    listing = "".join(f"{hashlib.sha256((archive / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    assert m["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert m["sha256_method"] == "directory-listing" and sorted(m["files"]) == names
    assert m["verified"]["test_restore"]["matched"] is True


def test_auto_format_picks_directory_for_large_databases(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    """backup_format=auto: the directory format from backup_large_db_bytes up."""
    result = backup(fresh_db, out, backup_format="auto", backup_large_db_bytes=1, backup_jobs=2)
    assert result.returncode == 0, playbook_output(result)
    assert manifests(out)[0]["format"] == "directory"


def test_lock_wait_timeout_fails_fast_and_leaves_nothing(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    """A table locked by DDL: the backup gives up after backup_lock_wait_timeout instead of
    queueing, says why, and leaves no partial archive."""
    holder = connect(fresh_db)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE clients_enhanced IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = backup(fresh_db, out, backup_lock_wait_timeout="1s")
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert result.returncode != 0
    assert "lock" in out_of(result).lower() and "pg_stat_activity" in out_of(result)
    assert elapsed < 60
    files = [p for p in Path(out["backup_dir"]).rglob("*") if p.is_file()]
    assert files == [], f"a failed backup left {files}"


def test_retention_keeps_the_newest_and_the_archive_the_ledger_names(fresh_db: dict[str, Any],
                                                                     out: dict[str, str]) -> None:
    """backup_retention_count=1 keeps the newest archive, plus the one phase 1 recorded (a restore
    reads it), and removes the others with their manifests."""
    phase1 = run_playbook(MIGRATE, fresh_db, {"phase": 1, **out})
    assert phase1.returncode == 0, playbook_output(phase1)
    recorded = query(fresh_db, """SELECT details -> 'backup' ->> 'path' FROM migration_ledger.history
                                   WHERE phase = '1' AND status = 'succeeded'""")[0][0]
    for _ in range(3):
        result = backup(fresh_db, out, backup_retention_count=1)
        assert result.returncode == 0, playbook_output(result)
    archives = sorted(str(p) for p in Path(out["backup_dir"]).rglob("*.dump"))
    newest = manifests(out)[-1]["path"]
    assert archives == sorted({recorded, newest})
    assert sorted(str(p) for p in Path(out["backup_dir"]).rglob("*.manifest.json")) == [f"{a}.manifest.json"
                                                                                      for a in archives]


@pytest.mark.parametrize(("extra", "needle"), [
    ({"backup_format": "tar"}, "backup_format"),
    ({"backup_verify_restore": True, "backup_row_counts": False}, "needs row_counts=true"),
])
def test_bad_input_is_refused_before_anything_is_written(fresh_db: dict[str, Any], out: dict[str, str],
                                                         extra: dict[str, Any], needle: str) -> None:
    result = backup(fresh_db, out, **extra)
    assert result.returncode != 0
    assert needle in out_of(result)
    assert not Path(out["backup_dir"]).exists() or not any(p.is_file() for p in Path(out["backup_dir"]).rglob("*"))


def test_check_mode_writes_nothing(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    result = run_playbook(BACKUP, fresh_db, out, check=True)
    assert result.returncode == 0, playbook_output(result)
    assert "would write" in out_of(result)
    assert not Path(out["backup_dir"]).exists() or not any(p.is_file() for p in Path(out["backup_dir"]).rglob("*"))


def test_wrong_password_is_named_and_not_printed(fresh_db: dict[str, Any], out: dict[str, str]) -> None:
    wrong = {**fresh_db, "password": "not-the-password-42"}
    result = run_playbook(BACKUP, wrong, out, extra_args=["-vvv"])
    assert result.returncode != 0
    assert "wrong credentials" in out_of(result)
    assert "not-the-password-42" not in out_of(result)


# --- units --------------------------------------------------------------------------------------


def test_retention_rule() -> None:
    """Both rules off keep everything; otherwise an archive stays when it is among the newest N,
    younger than D days, or protected."""
    now = 1_000_000_000.0
    day = 86400
    found = [{"path": f"/b/a{i}.dump", "mtime": now - i * day} for i in range(5)]  # newest first
    select = backup_module.select_expired
    assert select(found, 0, 0, set(), now) == []
    assert select(found, 2, 0, set(), now) == ["/b/a2.dump", "/b/a3.dump", "/b/a4.dump"]
    assert select(found, 0, 2.5, set(), now) == ["/b/a3.dump", "/b/a4.dump"]
    assert select(found, 1, 2.5, {"/b/a4.dump"}, now) == ["/b/a3.dump"]


def test_count_comparison_names_each_table() -> None:
    assert dump_utils.compare_counts({"a": 1, "b": 2}, {"a": 1, "b": 2}) == []
    assert dump_utils.compare_counts({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == [
        "b: 2 expected, 3 found", "c: missing expected, 0 found"]


def test_conninfo_never_holds_the_password() -> None:
    params = {"db_host": "h", "db_port": 5432, "db_name": "d b", "db_user": "u", "db_password": "s3cret",
              "db_sslmode": "require"}
    info = dump_utils.conninfo(params, read_only=True)
    assert "s3cret" not in info and "dbname='d b'" in info and "default_transaction_read_only=on" in info


def test_table_keys_keep_the_manifest_contract(fresh_db: dict[str, Any]) -> None:
    """count_rows() qualifies every table; the manifest's row_counts keeps public's tables by bare
    name (what the restore reads), row_counts_all has them all."""
    conn = connect(fresh_db)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA extra; CREATE TABLE extra.t (i int); INSERT INTO extra.t VALUES (1), (2)")
            counts = dump_utils.count_rows(cur)
        conn.rollback()
    finally:
        conn.close()
    assert counts["extra.t"] == 2 and "public.clients_enhanced" in counts
    public = dump_utils.public_counts(counts)
    assert "clients_enhanced" in public and "t" not in public and "extra.t" not in public


def test_snapshot_is_read_only(fresh_db: dict[str, Any]) -> None:
    """The snapshot session refuses writes, so counting can never change the source."""
    params = {"db_host": fresh_db["host"], "db_port": fresh_db["port"], "db_name": fresh_db["dbname"],
              "db_user": fresh_db["user"], "db_password": fresh_db["password"], "db_sslmode": "prefer"}
    with dump_utils.Snapshot(params, "5s", "pytest") as snap:
        assert len(snap.id) > 0
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            snap.cur.execute("CREATE TABLE nope (i int)")


# --- pg_dump in the background (dump_beside, pipe_beside: the backup's and the clone's) ---------

def dump_params(db: dict[str, Any]) -> dict[str, Any]:
    return {"db_host": db["host"], "db_port": db["port"], "db_name": db["dbname"], "db_user": db["user"],
            "db_password": db["password"], "db_sslmode": "disable", "connect_timeout": 10}


def processes_with(text: str) -> list[int]:
    """The processes whose command line holds text."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_failed_count_stops_the_background_pg_dump(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """dump_beside: when the work beside pg_dump fails, pg_dump (here waiting for a table lock)
    is killed and reaped before the error goes on; nothing of it outlives the snapshot."""
    params = dump_params(fresh_db)
    marker = f"pytest-dump-{uuid.uuid4().hex[:8]}"
    env = dump_utils.tool_env(dump_utils.write_passfile(str(tmp_path), [params]))
    holder = connect(fresh_db)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE clients_enhanced IN ACCESS EXCLUSIVE MODE")
        with dump_utils.Snapshot(params, "5s", "pytest-snapshot") as snap:
            pg_dump = dump_utils.pg_program("pg_dump", "", snap.facts()["server_version_num"] // 10000)
            argv = [pg_dump, "--format=custom", "--no-password", "--lock-wait-timeout=300s",
                    f"--snapshot={snap.id}", f"--file={tmp_path / 'db.dump'}",
                    f"--dbname={dump_utils.conninfo(params, application_name=marker)}"]

            def fail_once_pg_dump_waits() -> None:
                deadline = time.monotonic() + 120
                while not query(fresh_db, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                                          "AND wait_event_type = 'Lock'", (marker,)):
                    assert processes_with(marker), "pg_dump ended before it waited for the lock"
                    assert time.monotonic() < deadline, "pg_dump never waited for the locked table"
                    time.sleep(0.1)
                raise RuntimeError("counting failed")

            with pytest.raises(RuntimeError, match="counting failed"):
                dump_utils.dump_beside(argv, env, str(tmp_path / "pg_dump.err"), fail_once_pg_dump_waits)
            assert processes_with(marker) == [], "pg_dump still runs after the work beside it failed"
    finally:
        holder.rollback()
        holder.close()
    assert (tmp_path / "pg_dump.err").is_file()


def test_pg_dump_streams_into_pg_restore_from_the_snapshot(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """pipe_beside: pg_dump | pg_restore copies exactly what the snapshot counts, no password in
    any command line; a pg_restore that fails gives its exit code and its stderr."""
    params = dump_params(fresh_db)
    copy = f"{fresh_db['dbname']}_copy"
    env = dump_utils.tool_env(dump_utils.write_passfile(str(tmp_path), [params]))
    admin = connect(fresh_db)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{copy}"')
        with dump_utils.Snapshot(params, "5s", "pytest-snapshot") as snap:
            pg_dump = dump_utils.pg_program("pg_dump", "", snap.facts()["server_version_num"] // 10000)
            pg_restore = dump_utils.pg_program("pg_restore", "", snap.facts()["server_version_num"] // 10000)
            dump_argv = [pg_dump, "--format=custom", "--no-password", f"--snapshot={snap.id}",
                         f"--dbname={dump_utils.conninfo(params, read_only=True)}"]

            def count_with_no_password_in_argv() -> dict[str, int]:
                assert processes_with(params["db_password"]) == []
                return snap.count_rows()

            counts, restored, dumped = dump_utils.pipe_beside(
                dump_argv, [pg_restore, "--no-password", "--exit-on-error",
                            f"--dbname={dump_utils.conninfo(params, dbname=copy)}"],
                env, str(tmp_path / "dump.err"), str(tmp_path / "restore.err"), count_with_no_password_in_argv)
            assert (restored.code, dumped.code) == (0, 0), (restored.stderr, dumped.stderr)
            assert restored.stderr_path == str(tmp_path / "restore.err")

            counts_failed, refused, cut = dump_utils.pipe_beside(
                dump_argv, [pg_restore, "--no-password", "--exit-on-error",
                            f"--dbname={dump_utils.conninfo(params, dbname=copy + '_missing')}"],
                env, str(tmp_path / "dump2.err"), str(tmp_path / "restore2.err"), snap.count_rows)
        check = connect({**fresh_db, "dbname": copy})
        try:
            with check.cursor() as cur:
                copied = dump_utils.count_rows(cur)
        finally:
            check.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
        admin.close()
    assert copied == counts and counts["public.client_app_overrides"] > 0
    assert counts_failed == counts
    assert refused.code != 0 and f"{copy}_missing" in refused.stderr
    # pg_dump's end is reported too (a broken pipe, or success when the whole dump fit in the
    # pipe's buffer before pg_restore gave up): the clone names pg_restore's failure first.
    assert cut.stderr_path == str(tmp_path / "dump2.err")


# --- room for phase 1's archive, checked before anything changes ------------------------------


def _refused_unchanged(db: dict[str, Any], extra: dict[str, Any], *needles: str) -> str:
    from helpers import db_snapshot, ledger_exists, snapshot_diff

    before = db_snapshot(db)
    result = run_playbook(MIGRATE, db, {"phase": "all", **extra})
    text = " ".join(out_of(result).split())
    assert result.returncode != 0, playbook_output(result)
    for needle in needles:
        assert needle in text, f"{needle!r} not in output\n{playbook_output(result)}"
    assert snapshot_diff(before, db_snapshot(db)) == []
    assert not ledger_exists(db)
    return text


def test_backup_destination_without_space_is_refused(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """A real file system of 64 KiB (tmpfs, mounted as root) as the backup destination: the
    preflight refuses, naming the free and the needed bytes and the variables, before phase 1
    writes anything (before, pg_dump filled it and phase 1 failed with the ledger written)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (the variable's test below runs anyway)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        text = _refused_unchanged(
            fresh_db,
            {"migration_backup_dir": str(small / "backups"), "migration_report_dir": str(tmp_path / "reports")},
            f"the backup destination {small}/backups/testdb has",
            "migration_backup_space_ratio 0.75",
            "point migration_backup_dir at a larger file system",
            "Nothing was changed",
        )
        free, needed = map(int, re.search(r"has (\d+) bytes free .* needs about (\d+) ", text).groups())
        assert free <= 65536 < needed
        assert not any(small.rglob("*"))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_backup_space_from_the_variable(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """migration_backup_required_free_bytes beyond the destination's free space is refused by
    name; -1 skips the check (check mode: nothing is written)."""
    dirs = {"migration_backup_dir": str(tmp_path / "backups"), "migration_report_dir": str(tmp_path / "reports")}
    _refused_unchanged(fresh_db, {**dirs, "migration_backup_required_free_bytes": 2**60},
                       f"migration_backup_required_free_bytes={2**60}")
    result = run_playbook(MIGRATE, fresh_db, {"phase": "all", **dirs, "migration_backup_required_free_bytes": -1},
                          check=True)
    assert result.returncode == 0, playbook_output(result)
