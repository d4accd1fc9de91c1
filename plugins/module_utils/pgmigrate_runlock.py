# One run at a time per database: the run lock.
#
# A session-level advisory lock on one fixed key, held for a playbook's whole run by a small
# holder process (one Python, one connection, no Ansible) that the first task of the run starts.
# The lock goes with its session, so nothing has to be cleaned up after a crash:
#   - the playbook's last task stops the holder (release);
#   - the holder watches the ansible-playbook process it belongs to (found up the process tree)
#     and exits within a tenth of a second once it is gone (killed, crashed, Ctrl-C);
#   - the holder exits as soon as its connection ends (terminated, server restarted, database
#     replaced by a clone);
#   - a lost controller (laptop closed, network cut) leaves a session nobody reads: the server's
#     TCP keepalives on that session (set by the holder, user-settable) end it within a minute.
# Who holds it is readable without any table (the database must stay byte for byte as it was
# when a second run is refused): pg_locks names the holder's session, whose application_name
# says pgmigrate-runlock and whose last statement (pg_stat_activity.query) carries the holder's
# identity as a JSON comment: playbook, operator, run id, since when, controller host and pid.
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import MigrationError, explain_connect_error

# 'pgmigrat' in ASCII: one key for every pgmigrate run on a database. Advisory locks are per
# database, so a fleet (one database per inventory host) has one lock per database.
RUNLOCK_KEY = 0x70676D6967726174
APPLICATION_NAME = "pgmigrate-runlock"
IDENTITY_MARK = "-- pgmigrate-runlock "
# Server-side keepalives of the holder's session: a controller that vanished is noticed after
# idle + interval * count = 15 + 5 * 6 = 45 s.
KEEPALIVES = {"tcp_keepalives_idle": 15, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 6}

_HOLDER_SQL = f"""
SELECT l.pid, a.application_name, a.backend_start, host(a.client_addr), a.query, a.usename
  FROM pg_locks AS l
  LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = {RUNLOCK_KEY >> 32} AND l.objid = {RUNLOCK_KEY & 0xFFFFFFFF} AND l.objsubid = 1
 LIMIT 1"""


def read_holder(conn: Any) -> dict[str, Any] | None:
    """Who holds the run lock on this database (read-only, never waits), or None."""
    with conn.cursor() as cur:
        cur.execute(_HOLDER_SQL)
        row = cur.fetchone()
    if not conn.autocommit:
        conn.rollback()
    if row is None:
        return None
    pid, app, backend_start, client, query, user = row
    holder: dict[str, Any] = {"backend_pid": pid, "application_name": app, "db_user": user,
                              "client_addr": client,
                              "backend_start": backend_start.isoformat() if backend_start else None}
    text = query or ""
    if text.startswith(IDENTITY_MARK):
        with contextlib.suppress(ValueError):
            holder.update(json.loads(text[len(IDENTITY_MARK):].splitlines()[0]))
    return holder


def describe_holder(holder: dict[str, Any]) -> str:
    if "run_id" not in holder:
        if holder.get("backend_start") is None:
            # Another login without pg_read_all_stats sees neither the query nor the start.
            return (f"session pid {holder['backend_pid']} (application_name "
                    f"{holder.get('application_name')}, login {holder.get('db_user')}; who runs it is "
                    "visible to that login and to members of pg_read_all_stats)")
        # Not one of our holders: a session that took the key itself.
        return (f"session pid {holder['backend_pid']} (application_name {holder.get('application_name')}, "
                f"login {holder.get('db_user')}, from {holder.get('client_addr') or 'a local socket'}, "
                f"connected since {holder['backend_start']})")
    return (f"{holder.get('playbook')}.yml run {holder.get('run_id')} by {holder.get('operator')}, "
            f"since {holder.get('since')}, from {holder.get('controller')} (ansible-playbook pid "
            f"{holder.get('controller_pid')}; session pid {holder['backend_pid']})")


def refusal(holder: dict[str, Any], target: str) -> str:
    return (f"{target} is locked by another run: {describe_holder(holder)}. One run at a time: let "
            "it finish and rerun (a run that died releases the lock with its session; "
            "playbooks/status.yml shows the holder). Nothing was changed.")


def ours(holder: dict[str, Any], run_id: str | None, watch_pid: int) -> bool:
    """Held by this run: its run id, or this very ansible-playbook process (a rehearsal's
    clone took it under the clone's run id)."""
    if run_id and holder.get("run_id") == run_id:
        return True
    return holder.get("controller") == socket.gethostname() and holder.get("controller_pid") == watch_pid


def ensure_held(conn: Any, run_id: str | None, target: str) -> bool:
    """For a module that changes the database: the run lock must be this run's. Held by this
    run's holder: fine. Held by another: refused. Free (the module run on its own, outside our
    playbooks): taken by this connection's session until it closes. Returns whether it took it."""
    holder = read_holder(conn)
    if holder is not None and ours(holder, run_id, playbook_pid()):
        return False
    if holder is None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (RUNLOCK_KEY,))
            taken = cur.fetchone()[0]
        if not conn.autocommit:
            conn.commit()
        if taken:
            return True
        holder = read_holder(conn) or {"backend_pid": "?"}
    raise MigrationError(refusal(holder, target))


# --- the ansible-playbook process the holder belongs to -------------------------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is absent): with the
    pid, it names one process even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def playbook_pid() -> int:
    """The ansible-playbook process this task belongs to: the topmost of the chain of
    ansible-playbook processes above us (a worker is a fork of it, a module process its
    grandchild). Without /proc (not Linux): our parent."""
    pid, found = os.getpid(), 0
    while pid > 1:
        if "ansible-playbook" in _cmdline(pid):
            found = pid
        elif found:
            break
        pid = _parent(pid)
    return found or os.getppid()


# --- the holder process ---------------------------------------------------------------------

class _Stop(Exception):
    pass


def _raise_stop(*_: Any) -> None:
    raise _Stop()


def _alive(pid: int, born: str) -> bool:
    """Whether the process `pid` started at `born` (start_time) still runs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z" and (not born or fields[19] == born)
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _hold(cfg: dict[str, Any], answer_fd: int) -> None:
    """The holder, in the forked child: connect, take the lock, answer one line on answer_fd
    (OK <backend pid>, BUSY or ERROR <json>), then hold it until told to stop (SIGTERM), the
    playbook's process is gone, or the connection ends."""
    import psycopg2  # noqa: PLC0415 - imported already by the parent; no new interpreter

    def answer(text: str) -> None:
        os.write(answer_fd, (text + "\n").encode())
        os.close(answer_fd)

    try:
        conn = psycopg2.connect(**cfg["connect"])
        conn.autocommit = True
        cur = conn.cursor()
        keepalives = {}
        for name, value in cfg["keepalives"].items():
            # What the server made of it: 0 on a Unix socket, where keepalives do not apply.
            cur.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
            keepalives[name] = cur.fetchone()[0]
        cur.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (cfg["key"],))
        taken, backend = cur.fetchone()
        if not taken:
            answer("BUSY")
            return
        # The session's last statement is its identity card (pg_stat_activity.query).
        card = dict(cfg["identity"], keepalives=keepalives)
        cur.execute(IDENTITY_MARK + json.dumps(card, sort_keys=True) + "\nSELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        answer("ERROR " + json.dumps(str(exc)))
        return
    signal.signal(signal.SIGTERM, _raise_stop)
    answer(f"OK {backend}")
    try:
        while _alive(cfg["watch_pid"], cfg["watch_start"]):
            # Readable: the server ended the session (or sent a notice): the lock is gone.
            if select.select([conn.fileno()], [], [], 0.1)[0]:
                break
    except _Stop:
        pass
    with contextlib.suppress(Exception):
        conn.close()


def _libpq(params: dict[str, Any]) -> dict[str, Any]:
    kwargs = {"host": params["db_host"], "port": params["db_port"], "dbname": params["db_name"],
              "user": params["db_user"], "sslmode": params.get("db_sslmode") or "prefer",
              "connect_timeout": params.get("connect_timeout") or 10,
              "application_name": APPLICATION_NAME,
              # the client side too: the holder notices a server that went away
              "keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 6}
    if params.get("db_password"):
        kwargs["password"] = params["db_password"]
    return kwargs


def identity(playbook: str, operator: str, run_id: str, watch_pid: int) -> dict[str, Any]:
    return {"playbook": playbook, "operator": operator, "run_id": run_id,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "controller": socket.gethostname(), "controller_pid": watch_pid}


def start_holder(params: dict[str, Any], ident: dict[str, Any], watch_pid: int) -> dict[str, Any]:
    """Start the holder; returns {'taken': True, 'holder_pid', 'holder_start', 'backend_pid'}
    or {'taken': False} when another session holds the lock. Raises MigrationError when it
    cannot connect.

    The holder is a fork of this process (psycopg2 is loaded already: no interpreter to start,
    a few milliseconds), in a session of its own (a Ctrl-C or a kill of the playbook's process
    group does not reach it; it sees the playbook go), with stdin/stdout/stderr on /dev/null and
    every other inherited descriptor closed: it keeps no pipe of Ansible's (or of whoever runs
    ansible-playbook) open."""
    cfg = {"connect": _libpq(params), "keepalives": KEEPALIVES, "key": RUNLOCK_KEY,
           "identity": ident, "watch_pid": watch_pid, "watch_start": start_time(watch_pid)}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, _max_fd())
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _hold(cfg, write_fd)
        finally:
            os._exit(0)  # no atexit handler, no flush of the parent's buffers
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer:
        line = answer.readline().decode(errors="replace").strip()
    if line.startswith("OK "):
        return {"taken": True, "holder_pid": pid, "holder_start": start_time(pid),
                "backend_pid": int(line[3:])}
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if line == "BUSY":
        return {"taken": False}
    error = json.loads(line[6:]) if line.startswith("ERROR ") else f"the lock holder did not start ({line!r})"
    raise MigrationError(explain_connect_error(error, params))


def _max_fd() -> int:
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 1 << 20)
    except (ValueError, OSError):
        return 4096


def stop_holder(holder_pid: int, holder_start: str, timeout_s: float = 30) -> bool:
    """Stop our holder (it closes its session, releasing the lock) and wait until it is gone.
    Only the process started as the holder is signalled (pid and start time)."""
    if holder_pid <= 1 or (holder_start and start_time(holder_pid) != holder_start):
        return False
    try:
        os.kill(holder_pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(holder_pid, os.WNOHANG)
        state = Path(f"/proc/{holder_pid}/stat")
        try:
            if state.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.02)
    return True
