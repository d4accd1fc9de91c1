"""Unit tests of plugins/module_utils/pgmigrate.py: SQL rendering and splitting, file
directives, connection errors, and lock retries against the real test cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from helpers import connect, pgcluster, plugin

pgmigrate = plugin("module_utils", "pgmigrate")

FAST_LOCK: dict[str, int] = {
    "lock_timeout_ms": 50,
    "lock_attempts": 60,
    "backoff_initial_ms": 50,
    "backoff_max_ms": 200,
    "statement_timeout_ms": 0,
}


def conn_params(db: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The module's connection parameters (db_*) for a fixture database dict."""
    params = {
        "db_host": db["host"],
        "db_port": int(db["port"]),
        "db_name": db["dbname"],
        "db_user": db["user"],
        "db_password": db["password"],
        "db_sslmode": "disable",
        "connect_timeout": 5,
    }
    params.update(overrides)
    return params


# --- render ----------------------------------------------------------------------------


def test_render_quoted_literal_escapes_embedded_quote() -> None:
    """:'x' becomes a single-quoted literal with an embedded quote doubled."""
    assert pgmigrate.render("SELECT :'x'", {"x": "O'Brien"}) == "SELECT 'O''Brien'"


def test_render_identifier_is_double_quoted() -> None:
    """:"x" becomes a double-quoted identifier with an embedded double quote doubled."""
    assert pgmigrate.render('SELECT * FROM :"t"', {"t": 'we"ird'}) == 'SELECT * FROM "we""ird"'


def test_render_raw_value() -> None:
    """:x is replaced by the raw value, unquoted."""
    assert pgmigrate.render("SELECT 1 LIMIT :n", {"n": 5}) == "SELECT 1 LIMIT 5"


def test_render_leaves_casts_alone() -> None:
    """::uuid and ::text casts stay, even when a parameter has the type's name."""
    sql = "SELECT 'a'::uuid, x::text, :'uuid'"
    assert pgmigrate.render(sql, {"uuid": "v", "text": "w"}) == "SELECT 'a'::uuid, x::text, 'v'"


def test_render_leaves_unknown_names_alone() -> None:
    """Variables not in params are left exactly as written."""
    sql = "SELECT :'y', :\"y\", :y, :x"
    assert pgmigrate.render(sql, {"x": 1}) == "SELECT :'y', :\"y\", :y, 1"


# --- split_statements --------------------------------------------------------------------


def test_split_ignores_semicolons_in_quotes() -> None:
    """Semicolons inside string literals (with doubled quotes) and identifiers do not split."""
    sql = "SELECT 'a;b', 'it''s; fine'; SELECT \"we;ird\" FROM t;"
    assert pgmigrate.split_statements(sql) == [
        "SELECT 'a;b', 'it''s; fine'",
        'SELECT "we;ird" FROM t',
    ]


def test_split_keeps_dollar_quoted_blocks_whole() -> None:
    """DO blocks and functions in $$ or $tag$ quotes stay one statement each."""
    do_block = "DO $$\nBEGIN\n    PERFORM 1;\n    RAISE NOTICE 'x;y';\nEND\n$$"
    function = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$"
    sql = f"{do_block};\n{function};\nSELECT 2"
    assert pgmigrate.split_statements(sql) == [do_block, function, "SELECT 2"]


def test_split_ignores_semicolons_in_comments() -> None:
    """Semicolons in -- and /* */ comments do not split; comment-only pieces are dropped."""
    sql = "-- header; with a semicolon\nSELECT 1; /* block; comment */ SELECT 2;\n-- trailing; note\n"
    statements = pgmigrate.split_statements(sql)
    assert len(statements) == 2
    assert statements[0].endswith("SELECT 1")
    assert statements[1].endswith("SELECT 2")
    assert "/* block; comment */" in statements[1]


def test_split_drops_a_trailing_block_comment() -> None:
    """A piece holding only a /* */ comment is no statement (libpq rejects empty queries)."""
    assert pgmigrate.split_statements("SELECT 1;\n/* the end; really */\n") == ["SELECT 1"]


# --- file_directives --------------------------------------------------------------------


def test_file_directives_read_from_the_header() -> None:
    """`-- pgmigrate: a, b` lines of the leading comment block are parsed into a set."""
    sql = "-- pgmigrate: no-transaction\n-- Some description\n-- pgmigrate: x, y\nSELECT 1;\n"
    assert pgmigrate.file_directives(sql) == {"no-transaction", "x", "y"}


def test_file_directives_stop_at_the_first_statement() -> None:
    """A directive after the header comment, or none at all, gives no directives."""
    assert pgmigrate.file_directives("SELECT 1;\n-- pgmigrate: no-transaction\n") == set()
    assert pgmigrate.file_directives("-- just a comment\nSELECT 1;\n") == set()


# --- explain_connect_error ----------------------------------------------------------------

SECRET = "s3cr3t-Pa55word"


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        (
            f'connection to server failed: FATAL:  password authentication failed for user "u" '
            f"(password={SECRET})",
            "wrong credentials",
        ),
        (f"could not connect to server: Connection refused password={SECRET}", "unreachable"),
        (f'FATAL:  database "x" does not exist {SECRET}', "does not exist"),
    ],
)
def test_explain_connect_error_never_echoes_the_password(text: str, fix: str) -> None:
    """The message names the fix and masks the password wherever libpq echoed it."""
    params = {"db_user": "u", "db_host": "h", "db_port": 5432, "db_name": "d", "db_password": SECRET}
    message = pgmigrate.explain_connect_error(text, params)
    assert fix in message
    assert SECRET not in message
    assert "u@h:5432/d" in message


def test_connect_with_wrong_password_names_the_fix(pg_cluster: dict[str, Any]) -> None:
    """A real authentication failure says 'wrong credentials' and hides the password."""
    wrong = "wrong-" + SECRET
    with pytest.raises(pgmigrate.MigrationError) as caught:
        pgmigrate.connect(conn_params({**pg_cluster, "dbname": "postgres"}, db_password=wrong))
    assert "wrong credentials" in str(caught.value)
    assert wrong not in str(caught.value)


def test_connect_to_closed_port_says_unreachable(pg_cluster: dict[str, Any]) -> None:
    """A real connection to a port nobody listens on says 'unreachable'."""
    params = conn_params({**pg_cluster, "dbname": "postgres"}, db_port=pgcluster.free_port())
    with pytest.raises(pgmigrate.MigrationError, match="unreachable"):
        pgmigrate.connect(params)


# --- with_lock_retry -----------------------------------------------------------------------


@pytest.fixture
def locked_table(fresh_db: dict[str, Any]) -> Iterator[tuple[dict[str, Any], Any]]:
    """A table `lock_probe` in fresh_db and a connection that can lock it in a transaction."""
    holder = connect(fresh_db)
    try:
        with holder.cursor() as cur:
            cur.execute("CREATE TABLE lock_probe (id int); INSERT INTO lock_probe VALUES (1), (2)")
        holder.commit()
        yield fresh_db, holder
    finally:
        holder.rollback()
        holder.close()


def hold_lock(holder: Any, seconds: float) -> threading.Thread:
    """Take ACCESS EXCLUSIVE on lock_probe now; a thread commits after `seconds`."""
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE lock_probe IN ACCESS EXCLUSIVE MODE")

    def release() -> None:
        time.sleep(seconds)
        holder.commit()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("transactional", [True, False])
def test_with_lock_retry_waits_out_a_held_lock(
    locked_table: tuple[dict[str, Any], Any], transactional: bool
) -> None:
    """Work blocked by a lock held ~1 s succeeds after retries, each wait capped by lock_timeout."""
    db, holder = locked_table
    seen_timeouts: list[str] = []

    def work(cur: Any) -> int:
        cur.execute("SHOW lock_timeout")
        seen_timeouts.append(cur.fetchone()[0])
        cur.execute("SELECT count(*) FROM lock_probe")
        return cur.fetchone()[0]

    conn = connect(db)
    try:
        thread = hold_lock(holder, 1.0)
        started = time.monotonic()
        result, retries = pgmigrate.with_lock_retry(conn, work, FAST_LOCK, transactional=transactional)
        elapsed = time.monotonic() - started
        thread.join()
    finally:
        conn.close()
    assert result == 2
    assert retries > 0
    assert elapsed >= 0.8, "the work cannot have run while the lock was held"
    assert set(seen_timeouts) == {"50ms"}


def test_a_transactional_file_lets_its_locks_go_as_its_last_statement_ends(
        locked_table: tuple[dict[str, Any], Any]) -> None:
    """pgmigrate_sql sends a transactional file in one round trip: when the query returns, the
    server has committed it and released its ACCESS EXCLUSIVE lock (no COMMIT still to come from
    the controller). It stays one transaction: a failing statement undoes the ones before it."""
    db, other = locked_table
    run_transactional = plugin("modules", "pgmigrate_sql").run_transactional
    after_file: list[tuple[int, bool]] = []

    class Watching(psycopg2.extensions.cursor):
        def execute(self, query: Any, vars: Any = None) -> None:  # noqa: A002 - psycopg2's name
            super().execute(query, vars)
            if "LOCK TABLE" in str(query):
                with other.cursor() as cur:
                    try:
                        cur.execute("SET LOCAL lock_timeout = '10ms'; "
                                    "LOCK TABLE lock_probe IN ACCESS EXCLUSIVE MODE")
                        free = True
                    except psycopg2.errors.LockNotAvailable:
                        free = False
                other.rollback()
                after_file.append((self.connection.get_transaction_status(), free))

    conn = connect(db)
    conn.cursor_factory = Watching
    try:
        run_transactional(conn, "LOCK TABLE lock_probe IN ACCESS EXCLUSIVE MODE;\n"
                                "UPDATE lock_probe SET id = id + 10", FAST_LOCK)
        assert after_file == [(psycopg2.extensions.TRANSACTION_STATUS_IDLE, True)]
        with pytest.raises(psycopg2.errors.DivisionByZero):
            run_transactional(conn, "LOCK TABLE lock_probe IN ACCESS EXCLUSIVE MODE;\n"
                                    "UPDATE lock_probe SET id = id + 100; SELECT 1 / 0", FAST_LOCK)
        with conn.cursor() as cur:
            cur.execute("SELECT array_agg(id ORDER BY id) FROM lock_probe")
            assert cur.fetchone()[0] == [11, 12]
    finally:
        conn.close()


def test_with_lock_retry_gives_up_naming_the_long_transaction(locked_table: tuple[dict[str, Any], Any]) -> None:
    """With lock_attempts=2 and the lock still held, it raises MigrationError naming the cause."""
    db, holder = locked_table
    conn = connect(db)
    try:
        thread = hold_lock(holder, 1.5)
        with pytest.raises(pgmigrate.MigrationError) as caught:
            pgmigrate.with_lock_retry(
                conn,
                lambda cur: cur.execute("LOCK TABLE lock_probe IN ACCESS SHARE MODE"),
                {**FAST_LOCK, "lock_attempts": 2},
            )
        thread.join()
    finally:
        conn.close()
    message = str(caught.value)
    assert "long transaction holds" in message
    assert "2 attempts" in message


def test_with_lock_retry_does_not_retry_other_errors(fresh_db: dict[str, Any]) -> None:
    """An error that is not a lock timeout or deadlock propagates at once and is rolled back."""
    attempts: list[int] = []

    def work(cur: Any) -> None:
        attempts.append(1)
        cur.execute("CREATE TABLE should_not_exist (id int)")
        cur.execute("SELECT 1 / 0")

    conn = connect(fresh_db)
    try:
        with pytest.raises(psycopg2.errors.DivisionByZero):
            pgmigrate.with_lock_retry(conn, work, FAST_LOCK)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('should_not_exist')")
            assert cur.fetchone()[0] is None
    finally:
        conn.close()
    assert len(attempts) == 1


@pytest.fixture
def slow_autovacuum(fresh_db: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A real autovacuum worker holding its lock on av_target for many seconds: dead rows, a
    vacuum throttled to a page or so per 100 ms, autovacuum_naptime 1 s while the test runs."""
    admin = connect({**fresh_db, "dbname": "postgres"})
    admin.autocommit = True
    conn = connect(fresh_db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("""CREATE TABLE av_target (id int, pad text) WITH (
                         autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
                         autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)""")
        cur.execute("INSERT INTO av_target SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g")
        cur.execute("DELETE FROM av_target WHERE id % 2 = 0")
    with admin.cursor() as cur:
        cur.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        cur.execute("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 60
        while not _autovacuum_pids(conn):
            assert time.monotonic() < deadline, "no autovacuum worker started on av_target within 60 s"
            time.sleep(0.2)
        yield fresh_db
    finally:
        with admin.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET autovacuum_naptime")
            cur.execute("SELECT pg_reload_conf()")
        conn.close()
        admin.close()


def _autovacuum_pids(conn: Any) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("""SELECT pid FROM pg_stat_activity
                        WHERE backend_type = 'autovacuum worker' AND query LIKE '%av_target%'""")
        pids = [r[0] for r in cur.fetchall()]
    if not conn.autocommit:
        conn.rollback()
    return pids


def test_autovacuum_yields_to_a_lock_timeout(slow_autovacuum: dict[str, Any]) -> None:
    """An autovacuum holds av_target's SHARE UPDATE EXCLUSIVE lock: ALTER TABLE times out
    attempt after attempt; with the SQL given, the runner cancels that autovacuum after the first
    timeout (as PostgreSQL would after deadlock_timeout) and the ALTER goes through."""
    conn = connect(slow_autovacuum)
    conn.autocommit = True
    statement = "ALTER TABLE av_target ADD COLUMN IF NOT EXISTS note text"

    def work(cur: Any) -> None:
        cur.execute(statement)

    try:
        # Without the SQL, nothing yields: three short attempts, then the operator's message.
        with pytest.raises(pgmigrate.MigrationError, match="gave up after 3 attempts"):
            pgmigrate.with_lock_retry(conn, work, {**FAST_LOCK, "lock_attempts": 3})
        assert _autovacuum_pids(conn), "the autovacuum finished on its own: the test proves nothing"
        started = time.monotonic()
        _, retries = pgmigrate.with_lock_retry(conn, work, FAST_LOCK, sql=statement)
        assert 1 <= retries <= 5
        assert time.monotonic() - started < 5
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.columns "
                        "WHERE table_name = 'av_target' AND column_name = 'note'")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [0, 3])
def test_connect_keeps_a_session_to_its_parallel_workers(fresh_db: dict[str, Any], workers: int) -> None:
    """db_parallel_workers holds for the whole session, after a rollback too, and the
    connection is handed back outside autocommit as psycopg2 opens it."""
    conn = pgmigrate.connect({**conn_params(fresh_db), "db_parallel_workers": workers})
    try:
        assert conn.autocommit is False
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('max_parallel_workers_per_gather'), "
                        "current_setting('max_parallel_maintenance_workers')")
            assert cur.fetchone() == (str(workers), str(workers))
    finally:
        conn.close()
