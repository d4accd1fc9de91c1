# Shared mechanics of pg_dump and pg_restore for the backup, the clone and the restore
# (pgmigrate_backup, pgmigrate_clone, pgmigrate_restore): finding the programs, passwords in a
# private password file (never argv, never the module's arguments on a command line), an exported
# snapshot held open while pg_dump reads it (so row counts and dump agree exactly), pg_dump in the
# background (alone, or streaming into pg_restore) while the module counts in that snapshot,
# archive checksums, creating a database like another and swapping one in under another's name
# (identifiers quoted, retried while sessions go), and error messages with the secrets taken out.
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    MigrationError,
    connect,
    quote_ident,
    quote_literal,
    sqlstate,
)

# Schemas never dumped as user data.
SYSTEM_SCHEMAS = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"

# Every ordinary table (partitions included, partitioned parents excluded: their rows are their
# partitions'), outside the system schemas and outside extensions (pg_dump does not dump an
# extension's tables as data).
USER_TABLES_SQL = f"""
    SELECT n.nspname, c.relname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'r' AND {SYSTEM_SCHEMAS}
       AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
     ORDER BY 1, 2"""


def table_key(schema: str, name: str) -> str:
    """How count_rows() names a table: schema.table, always."""
    return f"{schema}.{name}"


def public_counts(counts: dict[str, int], schema: str = "public") -> dict[str, int]:
    """The manifest's row_counts as the restore reads them (since the first manifest): the tables
    of the migrated schema (migration_db_schema, public by default), by bare name. Every table,
    schema-qualified, is in row_counts_all."""
    return {key.split(".", 1)[1]: n for key, n in counts.items() if key.startswith(f"{schema}.")}


def count_rows(cur: Any) -> dict[str, int]:
    """Exact row counts of every user table, in the cursor's current transaction."""
    cur.execute(USER_TABLES_SQL)
    tables = cur.fetchall()
    counts: dict[str, int] = {}
    for schema, name in tables:
        cur.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(name)}")
        counts[table_key(schema, name)] = cur.fetchone()[0]
    return counts


def count_tables(cur: Any, keys: list[str]) -> dict[str, int | None]:
    """Exact row counts of the given schema.table keys (count_rows' naming), in the cursor's
    current transaction; None for a table that does not exist."""
    counts: dict[str, int | None] = {}
    for key in keys:
        schema, name = key.split(".", 1)
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL", (schema, name))
        if not cur.fetchone()[0]:
            counts[key] = None
            continue
        cur.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(name)}")
        counts[key] = cur.fetchone()[0]
    return counts


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Differences between two row_counts, one line per table ('' when equal)."""
    lines = []
    for table in sorted(set(expected) | set(actual)):
        want, got = expected.get(table), actual.get(table)
        if want != got:
            lines.append(f"{table}: {'missing' if want is None else want} expected, "
                         f"{'missing' if got is None else got} found")
    return lines


# --- programs -------------------------------------------------------------------------------

# Where tools/ensure-pg-versions.sh unpacks PyPI's PostgreSQL server wheels (.pg/<major>/), and
# the programs' place inside one.
PG_VERSIONS_ENV = "PGMIGRATE_PG_ROOT"
WHEEL_BIN_DIR = os.path.join("pgserver", "pginstall", "bin")


def _version_dirs_key(path: Path) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", path.parent.parent.name)] or [0]


def candidate_bin_dirs() -> list[str]:
    """Every directory on the controller that may hold PostgreSQL client programs: PATH's,
    Debian's /usr/lib/postgresql/*/bin, and the project's unpacked server wheels (.pg/*; the
    project found from this file, the working directory and $PGMIGRATE_PG_ROOT)."""
    dirs: list[str] = []
    roots = [os.environ.get(PG_VERSIONS_ENV, ""), os.path.join(os.getcwd(), ".pg"),
             str(Path(__file__).resolve().parents[2] / ".pg")]
    for name in ("pg_dump", "pg_restore"):
        found = shutil.which(name)
        if found:
            dirs.append(os.path.dirname(os.path.realpath(found)))
    dirs += [str(p.parent) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), key=_version_dirs_key)]
    for root in roots:
        if root and os.path.isdir(root):
            dirs += sorted(os.path.join(root, d, WHEEL_BIN_DIR) for d in os.listdir(root))
    unique: list[str] = []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in unique and os.path.isdir(real):
            unique.append(real)
    return unique


def program_for_major(name: str, server_major: int) -> str | None:
    """The program `name` of the server's major version from candidate_bin_dirs(); else the
    oldest newer one (pg_dump and pg_restore read and write older servers); else None."""
    found: dict[int, str] = {}
    for directory in candidate_bin_dirs():
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            try:
                found.setdefault(program_major(path), path)
            except MigrationError:
                continue
    newer = sorted(major for major in found if major >= server_major)
    return found[newer[0]] if newer else None


def pg_program(name: str, bin_dir: str = "", server_major: int | None = None) -> str:
    """Absolute path of pg_dump/pg_restore: in bin_dir when given; else, with server_major, the
    one of that major the controller has (program_for_major); else on PATH, else the highest
    /usr/lib/postgresql/*/bin (Debian keeps them there)."""
    if bin_dir:
        path = os.path.join(bin_dir, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise MigrationError(f"{name} not found in {bin_dir} (check backup_pg_bin_dir / clone_pg_bin_dir)")
    if server_major:
        matching = program_for_major(name, server_major)
        if matching:
            return matching
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=_version_dirs_key)
    if versions:
        return str(versions[-1])
    raise MigrationError(f"{name} is not installed on the controller: install the PostgreSQL client "
                         "(Debian: apt-get install postgresql-client) or set backup_pg_bin_dir")


def program_version(path: str) -> str:
    """What `program --version` prints ('pg_dump (PostgreSQL) 15.18 (Debian ...)')."""
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def program_major(path: str) -> int:
    """Major version of a PostgreSQL program ('pg_dump (PostgreSQL) 15.18 ...' gives 15)."""
    out = program_version(path)
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", out)
    if not match:
        raise MigrationError(f"cannot tell the version of {path} from {out.strip()!r}")
    major = int(match.group(1))
    # 9.6 and older: major is the first two numbers.
    return major * 10 + int(match.group(2) or 0) if major < 10 else major


def require_dump_version(pg_dump: str, server_version_num: int, what: str) -> int:
    """pg_dump must be at least as new as the server it reads."""
    major = program_major(pg_dump)
    server_major = server_version_num // 10000
    if major < server_major:
        raise MigrationError(
            f"{pg_dump} is version {major} but {what} runs PostgreSQL {server_major}: pg_dump must be at "
            f"least as new as the server, and the controller has none of version {server_major} or newer "
            f"(PATH, /usr/lib/postgresql/*/bin, the project's .pg/*). Install postgresql-client-{server_major} "
            "and point backup_pg_bin_dir / clone_pg_bin_dir at its bin directory")
    return major


# --- connections for the programs -----------------------------------------------------------

def _conninfo_value(value: Any) -> str:
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(params: dict[str, Any], dbname: str | None = None, read_only: bool = False,
             application_name: str = "pgmigrate") -> str:
    """A libpq connection string without the password (that goes in the password file): safe to
    appear in argv and in ps."""
    parts = {
        "host": params["db_host"],
        "port": params["db_port"],
        "dbname": dbname or params["db_name"],
        "user": params["db_user"],
        "sslmode": params.get("db_sslmode") or "prefer",
        "application_name": application_name,
        "connect_timeout": params.get("connect_timeout") or 10,
    }
    if read_only:
        # Every session the program opens on the source refuses writes, whatever it runs.
        parts["options"] = "-c default_transaction_read_only=on"
    return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())


def _pgpass_field(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def private_workdir(parent: str | None = None, prefix: str = "pgmigrate-") -> Iterator[str]:
    """A directory only its owner can enter, removed afterwards with everything in it."""
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=parent or None)
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_passfile(directory: str, connections: list[dict[str, Any]]) -> str:
    """A .pgpass (mode 0600) holding the passwords of the given connections, exact entries first."""
    path = os.path.join(directory, "pgpass")
    lines = []
    for params in connections:
        if params.get("db_password"):
            lines.append(":".join(_pgpass_field(x) for x in (
                params["db_host"], params["db_port"], "*", params["db_user"], params["db_password"])))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + ("\n" if lines else ""))
    return path


def tool_env(passfile: str) -> dict[str, str]:
    """The programs' environment: the password file; nothing from the caller's PG* variables,
    which could point them elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = passfile
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def first_lines(text: str, count: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:count]) if lines else "no output"


def run_tool(argv: list[str], env: dict[str, str], what: str, secrets: list[str]) -> str:
    """Run a program to the end; its stderr, or MigrationError naming what failed."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MigrationError(f"{what} failed (exit {proc.returncode}): {scrub(first_lines(proc.stderr), secrets)}")
    return proc.stderr


def restore_list_entries(pg_restore: str, archive: str, env: dict[str, str], secrets: list[str]) -> int:
    """pg_restore --list: the number of table-of-contents entries (0 means unusable)."""
    proc = subprocess.run([pg_restore, "--list", archive], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise MigrationError(f"pg_restore --list cannot read {archive}: {scrub(first_lines(proc.stderr), secrets)}")
    return sum(1 for line in proc.stdout.splitlines() if line.strip() and not line.startswith(";"))


# --- programs in the background -------------------------------------------------------------
# module.run_command runs one program to its end. pg_dump must run while the module counts rows in
# the snapshot it reads, and the clone streams it into pg_restore: both need processes of their
# own. Their stderr goes to files (a pipe nobody reads while they run could fill and stall them),
# read once they ended; the passwords are in the environment's PGPASSFILE, never in argv.

T = TypeVar("T")


class Ended(NamedTuple):
    """How a program started in the background ended: exit code, its stderr (the file's text)
    and the file it wrote that to."""
    code: int
    stderr: str
    stderr_path: str


def _stop(proc: subprocess.Popen) -> None:
    """Kill a program and reap it (so nothing of it outlives the snapshot it reads)."""
    proc.kill()
    proc.wait()


def dump_beside(argv: list[str], env: dict[str, str], stderr_path: str, work: Callable[[], T]) -> tuple[T, Ended]:
    """Start pg_dump (argv: --snapshot and --file included) in the background, stdout discarded,
    stderr into stderr_path; run work() meanwhile (the row counts of the same snapshot); then wait
    for pg_dump. When work() raises, pg_dump is killed and reaped and the exception goes on.
    Returns (work()'s result, how pg_dump ended); the caller judges the exit code."""
    with open(stderr_path, "w+") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            result = work()
        except BaseException:
            _stop(proc)
            raise
        code = proc.wait()
        err.seek(0)
        return result, Ended(code, err.read(), stderr_path)


def pipe_beside(dump_argv: list[str], restore_argv: list[str], env: dict[str, str], dump_stderr_path: str,
                restore_stderr_path: str, work: Callable[[], T]) -> tuple[T, Ended, Ended]:
    """pg_dump (dump_argv, writing to stdout) streamed into pg_restore (restore_argv, reading
    stdin), both in the background, each with its stderr in its file; work() runs meanwhile, then
    both are waited for. When work() (or starting pg_restore) raises, both are killed and reaped
    and the exception goes on. Returns (work()'s result, how pg_restore ended, how pg_dump ended)."""
    with open(dump_stderr_path, "w+") as dump_err, open(restore_stderr_path, "w+") as restore_err:
        dump = subprocess.Popen(dump_argv, env=env, stdout=subprocess.PIPE, stderr=dump_err)
        try:
            restore = subprocess.Popen(restore_argv, env=env, stdin=dump.stdout, stdout=subprocess.DEVNULL,
                                       stderr=restore_err)
        except BaseException:
            dump.stdout.close()
            _stop(dump)
            raise
        # pg_restore holds the pipe's read end now: pg_dump sees a broken pipe if it stops.
        dump.stdout.close()
        try:
            result = work()
        except BaseException:
            _stop(dump)
            _stop(restore)
            raise
        restore_code, dump_code = restore.wait(), dump.wait()
        restore_err.seek(0)
        dump_err.seek(0)
        return (result, Ended(restore_code, restore_err.read(), restore_stderr_path),
                Ended(dump_code, dump_err.read(), dump_stderr_path))


# --- the snapshot ---------------------------------------------------------------------------

class Snapshot:
    """A REPEATABLE READ, READ ONLY transaction on the source whose snapshot is exported: pg_dump
    --snapshot=<id> then reads exactly what count_rows() counts. Held open until closed (an
    exported snapshot can be imported only while its transaction lives). lock_timeout is the
    backup's lock wait timeout, so counting never queues behind, or in front of, DDL."""

    def __init__(self, params: dict[str, Any], lock_wait_timeout: str, application_name: str) -> None:
        self.conn = connect(params, application_name)
        self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        self.cur = self.conn.cursor()
        self.cur.execute("SELECT set_config('lock_timeout', %s, true)", (lock_wait_timeout,))
        self.cur.execute("SELECT pg_export_snapshot()")
        self.id = self.cur.fetchone()[0]

    def facts(self) -> dict[str, Any]:
        self.cur.execute(
            """SELECT current_database(), current_setting('server_version'),
                      current_setting('server_version_num')::int, pg_database_size(current_database()),
                      pg_encoding_to_char(d.encoding), d.datcollate, d.datctype
                 FROM pg_database d WHERE d.datname = current_database()""")
        name, version, version_num, size, encoding, collate, ctype = self.cur.fetchone()
        return {"database": name, "server_version": version, "server_version_num": version_num,
                "database_size_bytes": size, "encoding": encoding, "lc_collate": collate, "lc_ctype": ctype}

    def count_rows(self) -> dict[str, int]:
        try:
            return count_rows(self.cur)
        except Exception as exc:
            if getattr(exc, "pgcode", None) == "55P03":
                raise MigrationError(
                    f"counting rows waited longer than the lock wait timeout for a table lock ({str(exc).strip()}): "
                    "a long transaction or DDL holds it; find it in pg_stat_activity") from None
            raise

    def close(self) -> None:
        try:
            self.conn.rollback()
        finally:
            self.conn.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- checksums ------------------------------------------------------------------------------

def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_sha256(path: str) -> tuple[str, dict[str, str]]:
    """sha256 of an archive. A file (custom format): the file's sha256, as sha256sum prints it.
    A directory (directory format): the sha256 of the sha256sum listing of its files, sorted by
    name, i.e. `(cd ARCHIVE && LC_ALL=C sha256sum $(LC_ALL=C ls)) | sha256sum`; with the
    per-file sums. The restore checks an archive against the manifest the same way."""
    if os.path.isdir(path):
        files = {name: file_sha256(os.path.join(path, name)) for name in sorted(os.listdir(path))
                 if os.path.isfile(os.path.join(path, name))}
        listing = "".join(f"{digest}  {name}\n" for name, digest in files.items())
        return hashlib.sha256(listing.encode()).hexdigest(), files
    return file_sha256(path), {}


def archive_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
                   if os.path.isfile(os.path.join(path, n)))
    return os.path.getsize(path)


def remove_archive(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


# --- databases ------------------------------------------------------------------------------
# The clone and the restore both build a new database and, when asked, put it in another's place.
# Run on an autocommit connection to a maintenance database (CREATE DATABASE refuses a transaction).

def create_database(cur: Any, name: str, like: dict[str, Any] | None, encoding: str | None,
                    match_locale: bool, server_version: int, locale_hint: str) -> None:
    """CREATE DATABASE name from template0 with `encoding` and, with match_locale, the collation,
    ctype and ICU locale of `like` (a pg_database row as JSON: datcollate, datctype,
    datlocprovider, daticulocale or datlocale); without either, the server's defaults. A locale
    the server lacks fails naming locale_hint (the variable that drops it)."""
    sql = f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0"
    if encoding:
        sql += f" ENCODING {quote_literal(encoding)}"
    if like and match_locale:
        sql += f" LC_COLLATE {quote_literal(like['datcollate'])} LC_CTYPE {quote_literal(like['datctype'])}"
        icu = like.get("daticulocale") or like.get("datlocale")
        if like.get("datlocprovider") == "i" and icu and server_version >= 150000:
            sql += f" LOCALE_PROVIDER icu ICU_LOCALE {quote_literal(icu)}"
    try:
        cur.execute(sql)
    except Exception as exc:  # noqa: BLE001 - name the fix
        if sqlstate(exc) == "22023":
            raise MigrationError(f"the server lacks the locale of the database to copy ({str(exc).strip()}): "
                                 f"install it, or {locale_hint}") from None
        raise


def drop_database(cur: Any, name: str) -> None:
    cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


# An ALTER DATABASE ... RENAME waits up to 5 s for the ended sessions to go, then fails with
# 55006 (a session reconnected meanwhile, or a slow one): tried again, this many times.
SWAP_ATTEMPTS = 10


def swap_in(cur: Any, new: str, target: str, aside: str, close: bool = False) -> None:
    """`new` takes `target`'s name and `target` becomes `aside`, in one transaction: both names
    or neither. The sessions on `target` are ended first (a database with sessions cannot be
    renamed); with `close`, `target` refuses new ones meanwhile (ALLOW_CONNECTIONS false), and
    `aside` accepts them again after the swap, `target` after a failed one. Fails with
    MigrationError; `target` is then as it was."""
    if close:
        cur.execute(f"ALTER DATABASE {quote_ident(target)} WITH ALLOW_CONNECTIONS false")
    try:
        for attempt in range(SWAP_ATTEMPTS):
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
            cur.execute("BEGIN")
            try:
                cur.execute(f"ALTER DATABASE {quote_ident(target)} RENAME TO {quote_ident(aside)}")
                cur.execute(f"ALTER DATABASE {quote_ident(new)} RENAME TO {quote_ident(target)}")
                if close:
                    cur.execute(f"ALTER DATABASE {quote_ident(aside)} WITH ALLOW_CONNECTIONS true")
                cur.execute("COMMIT")
                return
            except Exception as exc:  # noqa: BLE001 - a session came back meanwhile: again
                cur.execute("ROLLBACK")
                if sqlstate(exc) != "55006" or attempt == SWAP_ATTEMPTS - 1:
                    raise MigrationError(f"cannot rename {target} aside: {str(exc).strip()}") from None
                time.sleep(0.2 * (attempt + 1))
    except BaseException:
        if close:
            cur.execute(f"ALTER DATABASE {quote_ident(target)} WITH ALLOW_CONNECTIONS true")
        raise
