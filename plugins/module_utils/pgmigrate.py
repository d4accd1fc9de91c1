# Shared mechanics for the pgmigrate modules: connecting with errors that name the fix, running
# SQL under a short lock_timeout with retries and backoff, rendering psql-style variables, the
# ledger. Every module imports this file; nothing here is phase specific.
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    import psycopg2.extras

    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported by the module through fail_json
    HAS_PSYCOPG2 = False

LEDGER_SCHEMA = "migration_ledger"
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
RETRYABLE = {LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED}

# The options every module takes to reach the database; values come from the inventory's
# migration_db_* variables.
CONNECTION_ARGS: dict[str, dict[str, Any]] = {
    "db_host": {"type": "str", "required": True},
    "db_port": {"type": "int", "default": 5432},
    "db_name": {"type": "str", "required": True},
    "db_user": {"type": "str", "required": True},
    "db_password": {"type": "str", "no_log": True},
    "db_sslmode": {"type": "str", "default": "prefer"},
    "connect_timeout": {"type": "int", "default": 10},
    # Parallel workers a migration session may start (max_parallel_workers_per_gather and
    # max_parallel_maintenance_workers). 0: each session keeps to one CPU, and the others stay
    # free for the application - on a small server a validation query fanning out into three
    # processes is what takes every core from it.
    "db_parallel_workers": {"type": "int", "default": 0},
    # The schema of the application's tables (migration_db_schema): every session's search_path
    # is that schema alone, so the SQL names tables and functions without a schema, creates in it,
    # and never resolves a name to a same-named table of another schema (public's, say), which a
    # DROP ... IF EXISTS of the rollback would otherwise find when the schema's own is gone.
    "db_schema": {"type": "str", "default": "public"},
}

# The lock-safety options of every module that takes strong locks.
LOCK_ARGS: dict[str, dict[str, Any]] = {
    "lock_timeout_ms": {"type": "int", "default": 50},
    "lock_attempts": {"type": "int", "default": 60},
    "backoff_initial_ms": {"type": "int", "default": 100},
    "backoff_max_ms": {"type": "int", "default": 5000},
    "statement_timeout_ms": {"type": "int", "default": 0},
    # How long a statement may wait for an autovacuum this login may not cancel (see
    # yield_autovacuum); such waits do not use up lock_attempts.
    "autovacuum_wait_s": {"type": "int", "default": 1800},
}
AUTOVACUUM_WAIT_S = 1800
AUTOVACUUM_POLL_S = 0.5


class MigrationError(Exception):
    """An error whose message tells the operator what to fix."""


def describe_target(params: dict[str, Any]) -> str:
    return f"{params['db_user']}@{params['db_host']}:{params['db_port']}/{params['db_name']}"


def connect(params: dict[str, Any], application_name: str = "pgmigrate") -> Any:
    """Open a libpq connection; turn libpq's errors into messages that name the fix."""
    if not HAS_PSYCOPG2:
        raise MigrationError(
            "psycopg2 is not importable by the Python running this module; install "
            "requirements.txt into the controller's virtualenv and set ansible_python_interpreter "
            "to it (the inventories use {{ ansible_playbook_python }})"
        )
    kwargs = {
        "host": params["db_host"],
        "port": params["db_port"],
        "dbname": params["db_name"],
        "user": params["db_user"],
        "sslmode": params.get("db_sslmode") or "prefer",
        "connect_timeout": params.get("connect_timeout") or 10,
        "application_name": application_name,
    }
    if params.get("db_password"):
        kwargs["password"] = params["db_password"]
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.OperationalError as exc:
        raise MigrationError(explain_connect_error(str(exc), params)) from None
    workers = params.get("db_parallel_workers")
    schema = params.get("db_schema")
    if workers is not None or schema:
        # Session settings, outside any transaction (a rollback would undo them), and not as the
        # startup packet's `options`, which connection poolers such as PgBouncer refuse.
        conn.autocommit = True
        with conn.cursor() as cur:
            if workers is not None:
                cur.execute("SELECT set_config('max_parallel_workers_per_gather', %s, false), "
                            "set_config('max_parallel_maintenance_workers', %s, false)",
                            (str(workers), str(workers)))
            if schema:
                cur.execute("SELECT set_config('search_path', quote_ident(%s), false)", (schema,))
        conn.autocommit = False
    return conn


# A connection pooler in transaction or statement mode (Supabase's port 6543, PgBouncer's
# pool_mode=transaction) gives each transaction of one client connection whichever server session
# is free: session settings, advisory locks and the run lock do not survive it. Detected before
# anything changes: a direct connection's backend sees our own TCP port as its client_port (and
# that is the end of it); otherwise we note our backend's pid, end the transaction, and open up to
# POOLER_PROBES more client connections, each holding a transaction open. A pool that hands
# server sessions out per transaction gives one of them our former session - at once with
# PgBouncer's default LIFO reuse, after the idle ones with server_round_robin - or, in statement
# mode, refuses their BEGIN; and our next transaction may land elsewhere. A session-mode pool
# keeps our session ours, so no probe ever sees its pid.
POOLER_PROBES = 8


def _local_port(conn: Any) -> int | None:
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            address = sock.getsockname()
    except OSError:
        return None
    return address[1] if isinstance(address, tuple) and len(address) >= 2 else None


def transaction_pooler(conn: Any, params: dict[str, Any]) -> str | None:
    """Why `conn` goes through a transaction- or statement-mode pooler, or None (see above)."""
    was = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), (SELECT client_port FROM pg_stat_activity "
                        "WHERE pid = pg_backend_pid())")
            pid, client_port = cur.fetchone()
        if client_port is not None and client_port == _local_port(conn):
            return None
        probes = []
        try:
            for _probe in range(POOLER_PROBES):
                probe = connect(params, "pgmigrate-pooler-probe")
                probes.append(probe)
                try:
                    with probe.cursor() as cur:
                        cur.execute("SELECT pg_backend_pid()")  # in a transaction, held open
                        other = cur.fetchone()[0]
                except psycopg2.Error as exc:
                    # PgBouncer in statement mode answers a BEGIN with an error and closes the
                    # connection ("transaction blocks not allowed in statement mode").
                    first = (str(exc).strip().splitlines() or ["connection closed"])[0]
                    return f"a transaction of two statements failed on a new connection: {first} (statement mode)"
                if other == pid:
                    return (f"another client connection got this connection's server session "
                            f"(backend {pid}) as soon as its transaction ended")
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                again = cur.fetchone()[0]
            if again != pid:
                return f"consecutive transactions of one connection ran in backends {pid} and {again}"
        finally:
            for probe in probes:
                probe.close()
        return None
    finally:
        conn.autocommit = was


def refuse_transaction_pooler(conn: Any, params: dict[str, Any]) -> None:
    """MigrationError naming the fix when `conn` goes through a transaction-mode pooler."""
    why = transaction_pooler(conn, params)
    if why:
        raise MigrationError(
            f"{describe_target(params)} is reached through a connection pooler in transaction or statement "
            f"mode ({why}): session settings, advisory locks and the run's lock do not survive it. Point "
            "migration_db_host and migration_db_port at the database's direct connection (Supabase: "
            "db.<project>.supabase.co port 5432, not the pooler's 6543) or at a session-mode pool "
            "(PgBouncer pool_mode=session). Nothing was changed.")


def explain_connect_error(text: str, params: dict[str, Any]) -> str:
    target = describe_target(params)
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    # libpq may echo the connection string; never let a password through.
    if params.get("db_password"):
        first = first.replace(params["db_password"], "********")
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        fix = "wrong credentials: check migration_db_user and migration_db_password (vault)"
    elif "does not exist" in lowered and "database" in lowered:
        fix = "the database does not exist: check migration_db_name"
    elif "timeout" in lowered or "refused" in lowered or "could not translate" in lowered \
            or "no route" in lowered or "could not connect" in lowered:
        fix = ("the server is unreachable: check migration_db_host and migration_db_port, and that "
               "it accepts TCP connections")
    else:
        fix = "check the migration_db_* connection variables"
    return f"cannot connect to {target}: {first} ({fix})"


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "pgcode", None)


def backoff_delays(initial_ms: int, max_ms: int) -> Iterator[float]:
    """Exponential backoff with full jitter, in seconds."""
    delay = max(1, initial_ms)
    while True:
        yield random.uniform(delay / 2, delay) / 1000.0
        delay = min(max_ms, delay * 2)


# PostgreSQL cancels a (non-wraparound) autovacuum that blocks a lock request once the request
# has waited deadlock_timeout (1 s). Ours give up after lock_timeout (50 ms), long before, and
# would wait behind the vacuum attempt after attempt (after a backfill's updates, autovacuum is
# due on the table it updated). So after a lock timeout we ask as PostgreSQL would: the autovacuum
# workers of this database that hold a lock on a relation the SQL names are cancelled, and
# autovacuum comes back later. An anti-wraparound vacuum is left alone, as PostgreSQL leaves it.
# Only a superuser may cancel an autovacuum worker (on PostgreSQL 18 also a member of
# pg_signal_autovacuum_worker): a managed database's login (Supabase's postgres, RDS's master
# user) may not. What we may not cancel we wait out (with_lock_retry): without taking the lock
# meanwhile, so the application never queues behind our request.
_AUTOVACUUM_HOLDERS = """
SELECT a.pid,
       -- the tables it vacuums (its indexes' locks follow from those), else whatever it holds
       coalesce(array_agg(DISTINCT c.relname::text ORDER BY c.relname::text) FILTER (WHERE c.relkind <> 'i'),
                array_agg(DISTINCT c.relname::text ORDER BY c.relname::text)),
       coalesce(a.query LIKE '%%(to prevent wraparound)', false)
  FROM pg_stat_activity AS a
  JOIN pg_locks AS l ON l.pid = a.pid AND l.locktype = 'relation' AND l.granted
  JOIN pg_class AS c ON c.oid = l.relation
 WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database()
   AND c.relname = ANY (%s)
 GROUP BY a.pid, a.query"""
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


def _end(conn: Any, ok: bool) -> None:
    if not conn.autocommit:
        conn.commit() if ok else conn.rollback()


def abandon(cur: Any) -> None:
    """End a failed transaction that an explicit BEGIN opened in autocommit (the connection
    may be gone: then the server has ended it)."""
    with suppress(psycopg2.Error):
        cur.execute("ROLLBACK")


def autovacuum_holders(conn: Any, sql: str) -> list[dict[str, Any]]:
    """The autovacuum workers holding a lock on a relation `sql` names; never raises."""
    names = sorted(set(_IDENTIFIER.findall(strip_comments(sql).lower())))
    try:
        with conn.cursor() as cur:
            cur.execute(_AUTOVACUUM_HOLDERS, (names,))
            rows = cur.fetchall()
        _end(conn, True)
    except psycopg2.Error:
        _end(conn, False)
        return []
    return [{"pid": pid, "relations": list(rels), "wraparound": bool(wrap)} for pid, rels, wrap in rows]


def cancel_autovacuum(conn: Any, sql: str) -> tuple[int, list[dict[str, Any]]]:
    """Cancel the autovacuum workers holding a lock on a relation `sql` names (see above).
    Returns (how many were cancelled, those left running: anti-wraparound, or not ours to
    signal, each with `why`). Each cancel in its own short transaction; never raises."""
    cancelled, kept = 0, []
    for holder in autovacuum_holders(conn, sql):
        if holder["wraparound"]:
            kept.append({**holder, "why": "it prevents transaction ID wraparound"})
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_cancel_backend(%s)", (holder["pid"],))
                cancelled += bool(cur.fetchone()[0])
            _end(conn, True)
        except psycopg2.Error as exc:
            _end(conn, False)
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            kept.append({**holder, "why": " ".join(lines[:2]) or "permission denied"})
    return cancelled, kept


def yield_autovacuum(conn: Any, sql: str) -> int:
    """Cancel the autovacuum workers holding a lock on a relation `sql` names; how many."""
    return cancel_autovacuum(conn, sql)[0]


def wait_out_autovacuum(conn: Any, sql: str, kept: list[dict[str, Any]], deadline: float,
                        bound_s: int) -> None:
    """Poll until no autovacuum holds a relation `sql` names (taking no lock meanwhile), or
    raise MigrationError once `deadline` (time.monotonic()) has passed."""
    while True:
        holders = autovacuum_holders(conn, sql)
        if not holders:
            return
        if time.monotonic() >= deadline:
            what = ", ".join(f"{'/'.join(h['relations'])} (pid {h['pid']})" for h in holders)
            why = (kept or [{"why": "it may not be cancelled"}])[0]["why"]
            raise MigrationError(
                f"waited {bound_s} s for an autovacuum of {what} that this login may not cancel ({why}); "
                "let it finish and run again, cancel it as a superuser (on PostgreSQL 18: GRANT "
                "pg_signal_autovacuum_worker to the login), or raise migration_lock_autovacuum_wait_s")
        time.sleep(AUTOVACUUM_POLL_S)


def _warn(message: str) -> None:
    """A warning in the task's result (AnsibleModule.exit_json returns the module's warnings)."""
    try:
        from ansible.module_utils.common.warnings import warn
    except ImportError:  # pragma: no cover - outside Ansible
        return
    warn(message)


def with_lock_retry(
    conn: Any,
    work: Callable[[Any], Any],
    lock: dict[str, Any],
    transactional: bool = True,
    sql: str | None = None,
) -> tuple[Any, int]:
    """Run work(cursor) under a short lock_timeout; retry lock timeouts and deadlocks.

    A statement that waits for a lock makes every later query on that table queue behind it, so
    we wait only lock_timeout_ms, give the lock back, sleep with backoff and try again. Returns
    (result, retries). transactional=False runs in autocommit (CREATE INDEX CONCURRENTLY). `sql`,
    the SQL work runs: after a lock timeout, an autovacuum on a relation it names is cancelled;
    one this login may not cancel is waited out (up to autovacuum_wait_s in all, a warning says
    so), and that attempt does not count against lock_attempts.
    """
    delays = backoff_delays(lock["backoff_initial_ms"], lock["backoff_max_ms"])
    retries = 0
    bound_s = int(lock.get("autovacuum_wait_s") or AUTOVACUUM_WAIT_S)
    waited: dict[int, dict[str, Any]] = {}
    wait_started: float | None = None
    conn.autocommit = not transactional
    while True:
        try:
            with conn.cursor() as cur:
                scope = "LOCAL " if transactional else ""
                cur.execute(f"SET {scope}lock_timeout = %s", (f"{lock['lock_timeout_ms']}ms",))
                cur.execute(f"SET {scope}statement_timeout = %s", (f"{lock['statement_timeout_ms']}ms",))
                result = work(cur)
            if transactional:
                conn.commit()
            if waited and wait_started is not None:
                relations = ", ".join(sorted({r for h in waited.values() for r in h["relations"]}))
                why = next(iter(waited.values()))["why"]
                _warn(f"waited {time.monotonic() - wait_started:.1f} s for an autovacuum of {relations} that "
                      f"this login may not cancel ({why}); the lock was not requested meanwhile, so nothing "
                      "queued behind it")
            return result, retries
        except psycopg2.Error as exc:
            if transactional:
                conn.rollback()
            if sqlstate(exc) not in RETRYABLE:
                raise
            if sql and sqlstate(exc) == LOCK_NOT_AVAILABLE:
                cancelled, kept = cancel_autovacuum(conn, sql)
                if kept and not cancelled:
                    # An autovacuum we may not cancel holds the lock: wait it out, then try again.
                    wait_started = wait_started or time.monotonic()
                    waited.update({h["pid"]: h for h in kept})
                    wait_out_autovacuum(conn, sql, kept, wait_started + bound_s, bound_s)
                    continue
            retries += 1
            if retries >= lock["lock_attempts"]:
                raise MigrationError(
                    f"gave up after {retries} attempts to take a lock within "
                    f"{lock['lock_timeout_ms']} ms ({str(exc).strip()}); a long transaction holds "
                    "it: find it in pg_stat_activity, or raise migration_lock_attempts"
                ) from None
            time.sleep(next(delays))


def run_transactional(conn: Any, sql: str, lock: dict[str, Any]) -> tuple[int, int]:
    """The file as one transaction in ONE round trip: its statements go as one simple query
    (after the session's lock_timeout, set in the round trip before, when no lock is held),
    which the server runs as one implicit transaction and commits as the last statement ends.
    The locks its DDL takes (ACCESS EXCLUSIVE for a column, SHARE ROW EXCLUSIVE for a foreign
    key) are released then, not when a controller that a busy machine may not schedule at once
    sends COMMIT: a lock held across that round trip holds the application's writes behind it for
    as long as the controller takes (docs/benchmarks.md, runs 14 and 15, phase 4's foreign key)."""
    def work(cur):
        cur.execute(sql)
        return cur.rowcount

    return with_lock_retry(conn, work, lock, transactional=False, sql=sql)


# psql-style variables: :'name' becomes a quoted literal, :"name" a quoted identifier and :name
# the raw value. Only names given in params are replaced, so casts like ::uuid are left alone.
_VARIABLE = re.compile(r"(?<![:\w]):(?:'(\w+)'|\"(\w+)\"|(\w+))")


def render(sql: str, params: dict[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        literal, ident, raw = match.groups()
        name = literal or ident or raw
        if name not in params:
            return match.group(0)
        value = params[name]
        if literal:
            return quote_literal(str(value))
        if ident:
            return quote_ident(str(value))
        return str(value)

    return _VARIABLE.sub(replace, sql)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements on semicolons outside quotes, dollar quotes and comments."""
    statements: list[str] = []
    buf: list[str] = []
    # Whether buf holds anything but comments and whitespace: a piece of comments only is no
    # statement (libpq refuses to execute an empty query).
    has_code = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            buf.append(sql[i:end])
            i = end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            buf.append(sql[i:end])
            i = end
            continue
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            buf.append(sql[i:end + 1])
            has_code = True
            i = end + 1
            continue
        if ch == "$":
            tag = re.match(r"\$(\w*)\$", sql[i:])
            if tag:
                close = sql.find(tag.group(0), i + len(tag.group(0)))
                close = n if close < 0 else close + len(tag.group(0))
                buf.append(sql[i:close])
                has_code = True
                i = close
                continue
        if ch == ";":
            if has_code:
                statements.append("".join(buf).strip())
            buf, has_code = [], False
            i += 1
            continue
        buf.append(ch)
        has_code = has_code or not ch.isspace()
        i += 1
    if has_code:
        statements.append("".join(buf).strip())
    return statements


def strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def file_directives(sql: str) -> set[str]:
    """Directives in the header comment: `-- pgmigrate: no-transaction`."""
    found: set[str] = set()
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        m = re.match(r"--\s*pgmigrate:\s*(.+)", line)
        if m:
            found.update(part.strip() for part in m.group(1).split(","))
    return found


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_checksums(paths: list[str], base: str | None = None) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to base (the migration's directory)."""
    out: dict[str, str] = {}
    for path in paths:
        p = Path(path)
        key = os.path.relpath(p, base) if base else p.name
        out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sql_label(root: str, path: str) -> str:
    """A file as the ledger's drift refusal names it: the migration directory's name and the
    file's path in it (ht036/phase2/deploy/010_columns.sql), the same on every checkout."""
    return f"{os.path.basename(os.path.normpath(root))}/{path}"


def combined_checksum(files: dict[str, str], params: dict[str, Any] | None = None) -> str:
    payload = json.dumps({"files": files, "params": params or {}}, sort_keys=True)
    return sha256_text(payload)


@contextmanager
def transaction(conn: Any) -> Iterator[Any]:
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def fetch_dicts(cur: Any, sql: str, args: Any = None) -> list[dict[str, Any]]:
    cur.execute(sql, args)
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def json_safe(value: Any) -> Any:
    """Make query results JSON-serialisable (uuids, timestamps, decimals) for Ansible."""
    return json.loads(json.dumps(value, default=str))


# --- the ledger -----------------------------------------------------------------------------

def ledger_exists(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.history",))
        exists = cur.fetchone()[0]
    conn.rollback()
    return exists


def ledger_state(conn: Any) -> dict[str, dict[str, Any]]:
    """The last finished record of every phase, keyed by phase; an empty ledger gives {}."""
    if not ledger_exists(conn):
        return {}
    with conn.cursor() as cur:
        rows = fetch_dicts(
            cur,
            f"""SELECT DISTINCT ON (phase) phase, direction, status, run_id, started_at,
                       finished_at, operator, approved_by, checksum, files, rows_affected, details,
                       round(extract(epoch FROM finished_at - started_at)::numeric, 1) AS duration_s
                  FROM {LEDGER_SCHEMA}.history
                 WHERE status = 'succeeded'
                 ORDER BY phase, finished_at DESC, id DESC""",
        )
    conn.rollback()
    return {row["phase"]: json_safe(row) for row in rows}


def applied_phases(state: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(p for p, row in state.items() if row["direction"] == "apply")


def ledger_size(conn: Any, lock_timeout_ms: int = 100) -> dict[str, Any]:
    """The space the ledger's tables hold (pg_total_relation_size: heap, indexes, TOAST), table by
    table, largest first. Sizing a table takes ACCESS SHARE: with a short lock_timeout a table being
    dropped (cleanup's finalize) is reported as None instead of waited for."""
    sizes: dict[str, int | None] = {}
    if not ledger_exists(conn):
        return {"bytes": 0, "tables": sizes}
    with conn.cursor() as cur:
        cur.execute("""SELECT c.relname FROM pg_class c
                        WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'p', 'm')
                        ORDER BY c.relname""", (LEDGER_SCHEMA,))
        names = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
        for name in names:
            cur.execute("SAVEPOINT size")
            try:
                cur.execute("SELECT pg_total_relation_size(to_regclass(%s))", (f"{LEDGER_SCHEMA}.{name}",))
                sizes[name] = cur.fetchone()[0]
                cur.execute("RELEASE SAVEPOINT size")
            except Exception:  # noqa: BLE001 - a lock not granted in time: said, not waited for
                cur.execute("ROLLBACK TO SAVEPOINT size")
                sizes[name] = None
    conn.rollback()
    ordered = dict(sorted(sizes.items(), key=lambda kv: -(kv[1] or 0)))
    return {"bytes": sum(v or 0 for v in sizes.values()), "tables": ordered}


def ledger_unfinished(conn: Any) -> dict[str, dict[str, Any]]:
    """Phases whose latest record did not succeed (running, failed or interrupted), keyed by
    phase: a run killed or failed half-way. A rollback treats such a phase as present (partly
    applied, or partly rolled back) and finishes the job; status shows them."""
    if not ledger_exists(conn):
        return {}
    with conn.cursor() as cur:
        rows = fetch_dicts(
            cur,
            f"""SELECT phase, direction, status, run_id, started_at, finished_at, operator, error
                  FROM (SELECT DISTINCT ON (phase) *
                          FROM {LEDGER_SCHEMA}.history ORDER BY phase, id DESC) latest
                 WHERE status <> 'succeeded'""",
        )
    conn.rollback()
    return {row["phase"]: json_safe(row) for row in rows}
