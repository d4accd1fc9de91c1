#!/usr/bin/env python3
"""make bench: the strategy's procedure as written against migrate.yml, under application traffic.

A benchmark, not a test: it prints figures, judges them against the targets below, and
never runs in `make test`. In one go, on one throwaway cluster (tools/pgcluster.py), with
the benchmark data set (migrations/ht036/baseline/generate.sql at --scale clients; 100000 clients make
1,005,000 overrides; VACUUM ANALYZE and a CHECKPOINT after seeding, so a fresh load's autovacuum
and checkpoint stay out of every run), each run on a fresh copy of the same seeded database and
under the same traffic: today's application, open loop (tools/bench/openloop.py: pgbench
--rate with the scripts of tools/bench/pgbench/, latency from each transaction's scheduled
start; once phase 5 made the views, a second stream reading them), at --rate-share of the
capacity pgbench measures for the same mix on a fresh copy at the start of the bench:

  baseline  the workload alone, no migration: the p99 the migration is held to;
  (a)       the strategy's procedure as written, through psql (tools/bench/strategy/): pg_dump
            -F c -b -v and pg_restore --list, then phases 1 to 6, each phase one psql script in
            autocommit; the strategy's elided parts are filled with our SQL (migrations/ht036);
  floor     the workload beside 1, then 2 database sessions that only burn CPU, no migration:
            what p99 becomes on this machine when that much of it is taken, whoever takes it;
  (b)       ansible-playbook playbooks/migrate.yml -e phase=all, monitoring included; only its
            degradation abort criterion is relaxed, as in the test inventory (tests/helpers.py):
            on a shared machine, under the bench's own traffic, it trips on noise. Its throttle
            reads the application's latency (pgbench's, tools/bench/appsignal.py) from a
            Prometheus of the bench's own, as it would a real application's (--no-app-signal:
            the database's signals alone).
  transition  a copy (b) migrated without traffic, the transition open: the mix's capacity there
            (unthrottled), then today's application's traffic alone there (no migration, no
            dashboard reads): what the sync in every write costs its latency, (b)'s floor in
            phases 3 and 4. The same (b) there, timed, is "(b) on a quiet copy".
  curve     the baseline, the floor (one busy session) and (b) again at other shares (--curve).

The targets (at the main share): (b) fails no application transaction, its worst stays under
100 ms and its p99 within 1.5x of the floor beside one busy session; (b) under the traffic takes
at most 2x (b) on a quiet copy; today's application's capacity with the transition open is at
least 0.85x its capacity before, for its usual mix and for a mix where every transaction reads,
flips and installs; the transition's deferred work (migration_ledger.transition_queue_state(),
sampled every 0.2 s during (b)) has an oldest entry younger than 2 s at p99 and is empty within
10 s after the traffic stops. (a) is reported beside (b) for reference.

Both sides run the same work: the same backup, the same SQL where the strategy elides it,
and the same phase 6 (our validator's checks, the tenant-isolation sessions, and each
cross-system query phase6_validate_query_runs times); (a) skips only the checks that read our
ledger, which (a) does not have. (b) does more besides: preflight refusals, the ledger, backup
verification and manifest, monitoring, notifications, the report; the table says how long its
Ansible tasks take, per role.

With --rounds N, (a) and (b) alternate in ABBA order (a linear drift of a shared machine's load
cancels out of the means); walls are means, worst and p99 are over every round's transactions.

It prints a table (wall time per phase and in total, worst application transaction, p99, errors,
lock waits sampled from pg_locks and pg_stat_activity, the ratios of (b) to (a)), saves it as
JSON under reports/ and draws reports/bench-<time>.png: application latency over time, phase
boundaries marked, one panel per run. Exit status 1 when a run failed, or with --strict when a
target is missed; 0 otherwise.

    tools/bench/bench.py [--rounds 1] [--scale 100000] [--rate-share 0.3 | --rate N] [--clients 8] [--strict]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.sql
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "plugins" / "module_utils"))
sys.path.insert(0, str(HERE))

import pgcluster  # noqa: E402
from appsignal import AppSignal  # noqa: E402
from openloop import APP_MIX, APP_NAME, READ_FLIP_INSTALL_MIX, OpenLoop, capacity  # noqa: E402
from pgmigrate import split_statements  # noqa: E402
from workload import LockSampler  # noqa: E402

STRATEGY = HERE / "strategy"
SQL = REPO / "migrations" / "ht036"
TEMPLATE = "bench_template"
# (b)'s fixed cost: the same playbook on a database too small for its data work to count.
FIXED_TEMPLATE = "bench_template_fixed"
FIXED_SCALE = 1000
PHASES = ["1", "2", "3", "4", "5", "6"]
PHASE_TITLES = {
    "1": "validate + backup", "2": "schema", "3": "data", "4": "constraints",
    "5": "access", "6": "validation",
}
TARGET_WORST_MS = 100.0
# (b)'s p99 against the machine's floor: the same traffic beside one session that only burns CPU,
# measured in the same run (no migration can do better than taking one CPU's worth).
TARGET_P99_FLOOR_FACTOR = 1.5
# (b) under the traffic against the same migration on a quiet copy: what yielding costs.
TARGET_WALL_QUIET_RATIO = 2.0
# Today's application's capacity with the transition open against before phase 3, both mixes.
TARGET_CAPACITY_RATIO = 0.85
# The transition's deferred work: the oldest entry's age under traffic (p99 of the samples), and
# how long after the traffic stops the queue is empty.
TARGET_QUEUE_AGE_P99_S = 2.0
TARGET_QUEUE_DRAINED_S = 10.0
QUEUE_SAMPLE_S = 0.2
# The operations the traffic runs with no migration (the dashboard reads need phase 5's views).
BASELINE_OPS = ("read", "flip", "install", "new_override")


# --- the cluster and the copies ---------------------------------------------------------------


def admin(info: dict[str, Any]) -> Any:
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                            password=info["password"], dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    return conn


def execute(info: dict[str, Any], dbname: str, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                            password=info["password"], dbname=dbname, connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def fresh_copy(info: dict[str, Any], name: str, template: str = TEMPLATE) -> dict[str, Any]:
    """A copy of the seeded template, checkpointed so no run pays for another's writes."""
    conn = admin(info)
    try:
        with conn.cursor() as cur:
            cur.execute(psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg2.sql.Identifier(name)))
            cur.execute(psycopg2.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                psycopg2.sql.Identifier(name), psycopg2.sql.Identifier(template)))
            cur.execute("CHECKPOINT")
    finally:
        conn.close()
    return {**info, "dbname": name}


def drop(info: dict[str, Any], name: str) -> None:
    conn = admin(info)
    try:
        with conn.cursor() as cur:
            cur.execute(psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg2.sql.Identifier(name)))
    finally:
        conn.close()


def seed_template(info: dict[str, Any], scale: int, template: str = TEMPLATE) -> float:
    started = time.monotonic()
    if pgcluster.database_exists(info, template):
        rows = execute(info, template, "SELECT count(*) FROM clients_enhanced")
        if rows[0][0] == scale:
            return 0.0
        drop(info, template)
    pgcluster.seed_database(info, template, scale)
    # A production table has been vacuumed: hint bits and the visibility map are set; and the
    # load's dirty pages are written now, not in the first run's checkpoint.
    execute(info, template, "VACUUM ANALYZE")
    execute(info, template, "CHECKPOINT")
    return time.monotonic() - started


# --- (a): the strategy through psql -------------------------------------------------------------


def role_default(role: str, name: str) -> Any:
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())[name]


def strategy_phase6(workdir: Path, query_runs: int) -> Path:
    """(a)'s phase 6, the way ours runs it: our validator's checks (those that need our ledger
    left out), tenant isolation as two authenticated sessions, and each cross-system query
    query_runs times."""
    lines = ["-- (a) phase 6, generated by tools/bench/bench.py from migrations/ht036/phase6/verify."]
    checks = (SQL / "phase6" / "verify" / "checks.sql").read_text()
    lines += [s + ";" for s in split_statements(checks) if "migration_ledger" not in s]
    lines += [
        "SELECT client_id AS c1 FROM handover_packages GROUP BY client_id ORDER BY client_id LIMIT 1 \\gset",
        "SELECT client_id AS c2 FROM handover_packages GROUP BY client_id ORDER BY client_id "
        "OFFSET 1 LIMIT 1 \\gset",
    ]
    for var in ("c1", "c2"):
        claims = "json_build_object('role', 'authenticated', 'app_metadata', " \
                 f"json_build_object('client_id', :'{var}'))::text"
        lines += [
            "BEGIN;",
            f"SELECT set_config('request.jwt.claims', {claims}, true);",
            "SET LOCAL ROLE authenticated;",
        ]
        for relation in ("orchestration_workflows", "handover_packages", "unified_client_dashboard"):
            lines.append(f"SELECT count(*) FILTER (WHERE client_id = :'{var}'), "
                         f"count(*) FILTER (WHERE client_id <> :'{var}') FROM {relation};")
        lines += [f"UPDATE orchestration_workflows SET status = status WHERE client_id <> :'{var}';",
                  "ROLLBACK;"]
    queries = split_statements((SQL / "phase6" / "verify" / "cross_system_queries.sql").read_text())
    for query in queries:
        lines += [query + ";"] * query_runs
    path = workdir / "phase6.sql"
    path.write_text("\n".join(lines) + "\n")
    return path


# The migration's client side - psql, pg_dump and pg_restore for (a); ansible-playbook and all it
# starts for (b) - runs this much nicer than the database. In production it runs on another
# machine than the database; on the benchmark box its CPU would otherwise be charged to the
# application's latency (measured on two CPUs: migrate.yml on 1,000 clients, nearly nothing but
# Ansible's own work, took the application's p99 from 2.0 to 6.0 ms). Both sides alike; the
# database server is not reniced. Set by --client-nice.
CLIENT_NICE = [10]


# The benchmark cluster's memory, as a production server's would be sized for its working set:
# with PostgreSQL's default 128 MB of shared_buffers, 100,000 clients (about 600 MB with the
# migration's indexes and plan) are read from the kernel's page cache, which this machine's
# proactive reclaim (DAMON) empties under our feet: the same installations ran at 30 per second
# instead of 2,400, every backend waiting in DataFileRead. --shared-buffers to change it.
def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared-buffers", default="1GB",
                        help="the benchmark cluster's shared_buffers (PostgreSQL's default: 128MB)")


def bench_settings(args: argparse.Namespace) -> dict[str, str]:
    return {"shared_buffers": args.shared_buffers}


def client_priority() -> None:
    os.nice(CLIENT_NICE[0])


class ProcedureFailed(RuntimeError):
    """A run that failed part way; what it did until then is kept for the table."""

    def __init__(self, message: str, spans: dict[str, list[float]], steps: dict[str, Any]) -> None:
        super().__init__(message)
        self.spans = spans
        self.steps = steps


def pg_env(db: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, "PGHOST": db["host"], "PGPORT": str(db["port"]), "PGUSER": db["user"],
            "PGPASSWORD": db["password"], "PGDATABASE": db["dbname"], "PGAPPNAME": "bench-strategy"}


def run_strategy(db: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """(a). Returns the phase spans (wall clock) and what each step took."""
    env = pg_env(db)
    log = workdir / "strategy.log"
    psql = [pgcluster.find_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull]
    claim_path = "{" + ",".join(role_default("migration", "migration_tenant_claim_path")) + "}"
    phase6 = strategy_phase6(workdir, int(role_default("phase6_validate", "phase6_validate_query_runs")))
    spans: dict[str, list[float]] = {}
    steps: dict[str, Any] = {}

    def step(name: str, cmd: list[str]) -> str:
        started = time.time()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                                preexec_fn=client_priority)
        steps[name] = round(time.time() - started, 3)
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(cmd)}  # {steps[name]} s\n{result.stderr}\n")
        if result.returncode != 0:
            raise ProcedureFailed(f"{name} failed ({result.returncode}): {result.stderr[-1500:]}", spans, steps)
        return result.stdout

    dump = workdir / "backup_pre_migration.dump"
    started = time.time()
    step("pg_dump", [pgcluster.find_pg_bin("pg_dump"), "-F", "c", "-b", "-v", "-f", str(dump)])
    listed = step("pg_restore --list", [pgcluster.find_pg_bin("pg_restore"), "--list", str(dump)])
    steps["backup_toc_lines"] = len(listed.splitlines())
    step("phase 1 SQL", [*psql, "-f", str(STRATEGY / "phase1.sql")])
    spans["1"] = [started, time.time()]
    for phase in ("2", "3", "4", "5"):
        started = time.time()
        step(f"phase {phase} SQL",
             [*psql, "-v", f"claim_path={claim_path}", "-f", str(STRATEGY / f"phase{phase}.sql")])
        spans[phase] = [started, time.time()]
    started = time.time()
    since = execute(db, db["dbname"], "SELECT (now() - interval '7 days')::text")[0][0]
    step("phase 6 validator + queries", [*psql, "-v", f"events_since={since}", "-f", str(phase6)])
    spans["6"] = [started, time.time()]
    dump.unlink(missing_ok=True)
    return {"spans": spans, "steps": steps}


# --- (b): migrate.yml -e phase=all ------------------------------------------------------------------


def run_playbook(db: dict[str, Any], workdir: Path, repo: Path, extra_vars: dict[str, Any]) -> dict[str, Any]:
    """(b). Phase spans come from the ledger: each phase's recorded start and finish."""
    inventory = {"all": {"children": {"databases": {"hosts": {"bench": {
        "migration_db_host": db["host"], "migration_db_port": int(db["port"]),
        "migration_db_name": db["dbname"], "migration_db_user": db["user"],
        "migration_db_password": db["password"], "migration_env": "local",
        # As in the test inventory (tests/helpers.py): the benchmark box is shared and loaded, and
        # the bench itself runs the workload, so a probe 50 % slower than its pre-migration
        # baseline is that load, not the migration; monitoring otherwise runs as configured. The
        # bench measures the application's latency itself, on both sides.
        "migration_abort_degradation_pct": 1000,
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}
    (workdir / "hosts.yml").write_text(json.dumps(inventory))
    extra = {"phase": "all", "migration_backup_dir": str(workdir / "backups"),
             "migration_report_dir": str(workdir / "reports"), **extra_vars}
    (workdir / "extra.json").write_text(json.dumps(extra))
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(repo / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "0",
           # Each task's duration in the saved log: where (b)'s time goes.
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_SORT_ORDER": "none",
           "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = workdir / "migrate.log"
    with log.open("w") as handle:
        result = subprocess.run(
            [playbook, "-i", str(workdir / "hosts.yml"), "-e", f"@{workdir / 'extra.json'}",
             str(repo / "playbooks" / "migrate.yml")],
            cwd=repo, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False,
            preexec_fn=client_priority)
    rows: list[tuple[Any, ...]] = []
    if pgcluster_table_exists(db, "migration_ledger.history"):
        rows = execute(db, db["dbname"], """
            SELECT phase, extract(epoch FROM started_at), extract(epoch FROM finished_at), status, details
              FROM migration_ledger.history
             WHERE direction = 'apply' AND finished_at IS NOT NULL ORDER BY id""")
    spans = {phase: [float(start), float(end)] for phase, start, end, _, _ in rows}
    details = {phase: d for phase, _, _, _, d in rows}
    phase3 = details.get("3", {})
    steps: dict[str, Any] = {key: phase3.get(key) for key in (
        "overrides_linked", "backfill_batches", "backfill_seconds", "slowest_batch_ms", "lock_retries",
        "batches_cut", "batches_over_target", "batches_cancelled") if key in phase3}
    # How long phase 3's batches and inserts yielded to the application, and why (the throttle).
    steps["throttle"] = {part: {k: v for k, v in t.items() if k not in ("chunks", "files")}
                         for part, t in (phase3.get("throttle") or {}).items()}
    steps["phases"] = {phase: status for phase, _, _, status, _ in rows}
    steps["ansible"] = task_profile(log.read_text())
    if result.returncode != 0:
        failed = [line.strip() for line in log.read_text().splitlines() if "msg:" in line or "[ERROR]" in line]
        raise ProcedureFailed(f"migrate.yml failed ({result.returncode}): {' / '.join(failed[-3:])}",
                              spans, steps)
    return {"spans": spans, "steps": steps}


def remove_drain_supervisors() -> None:
    """(b)'s phase 3 starts the transition's drain worker and, in this user's crontab, its
    supervisor (roles/drain). The bench drops every copy it migrated, which ends the workers;
    their supervisors' entries go with the bench too (inventory host "bench")."""
    found = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        return
    lines = found.stdout.splitlines(keepends=True)
    kept: list[str] = []
    skip_next = False
    for line in lines:
        if skip_next:
            skip_next = False
            continue
        if line.strip().startswith("#Ansible: pgmigrate transition drain bench-"):
            skip_next = True
            continue
        kept.append(line)
    if len(kept) != len(lines):
        subprocess.run(["crontab", "-"], input="".join(kept), text=True, check=False)


def pgcluster_table_exists(db: dict[str, Any], name: str) -> bool:
    return bool(execute(db, db["dbname"], f"SELECT to_regclass('{name}') IS NOT NULL")[0][0])


PROFILE_LINE = re.compile(r"^(?:(?P<role>[\w.]+) : )?(?P<task>.+?) -{3,} (?P<seconds>[\d.]+)s$")


def task_profile(log: str) -> dict[str, Any]:
    """Where (b)'s time goes, from ansible.posix.profile_tasks' lines: tasks and seconds per role
    (tasks outside a role, the includes in the playbook, under '(playbook)')."""
    by_role: dict[str, list[float]] = {}
    for line in log.splitlines():
        match = PROFILE_LINE.match(line.strip())
        if match and "PLAY RECAP" not in line:
            entry = by_role.setdefault(match["role"] or "(playbook)", [0.0, 0])
            entry[0] += float(match["seconds"])
            entry[1] += 1
    ordered = dict(sorted(by_role.items(), key=lambda kv: -kv[1][0]))
    return {"tasks": int(sum(v[1] for v in ordered.values())),
            "seconds": round(sum(v[0] for v in ordered.values()), 1),
            "by_role": {k: {"seconds": round(v[0], 1), "tasks": int(v[1])} for k, v in ordered.items()}}


# --- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


Transaction = tuple[float, float, str, "str | None"]


@dataclass
class Run:
    """One recording: traffic from before the procedure started until after it ended."""

    name: str
    t0: float = 0.0
    t1: float = 0.0
    spans: dict[str, list[float]] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    transactions: list[Transaction] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    queue: dict[str, Any] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return self.t1 - self.t0

    def during(self, start: float, end: float) -> list[Transaction]:
        """Transactions that ran at some point in [start, end]."""
        return [t for t in self.transactions if t[0] <= end and t[0] + t[1] / 1000 >= start]

    def lock_episodes(self) -> list[dict[str, Any]]:
        """Lock waits seen by the sampler during the run, one per (session, wait start)."""
        episodes: dict[tuple[Any, Any], dict[str, Any]] = {}
        for s in self.samples:
            if not self.t0 <= s["at"] <= self.t1:
                continue
            key = (s["pid"], s["wait_started"])
            waited = float(s["waited_ms"] or 0)
            if key not in episodes or waited > episodes[key]["waited_ms"]:
                episodes[key] = {"application_name": s["application_name"], "mode": s["mode"],
                                 "target": s["target"], "blocked_by": s["blocked_by"],
                                 "waited_ms": round(waited, 1), "at_s": round(s["at"] - self.t0, 2),
                                 "query": s["query"]}
        return sorted(episodes.values(), key=lambda e: -e["waited_ms"])

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "error": self.error, "wall_s": round(self.wall, 2),
                "spans_s": {p: [round(a - self.t0, 2), round(b - self.t0, 2)] for p, (a, b) in self.spans.items()},
                "phase_wall_s": {p: round(b - a, 2) for p, (a, b) in self.spans.items()},
                "app": app_stats([(self, self.t0, self.t1)]), "steps": self.steps,
                "pgbench_problems": self.problems[:20], "queue": self.queue,
                "lock_waits": self.lock_episodes()[:10]}


def app_stats(windows: list[tuple[Run, float, float]]) -> dict[str, Any]:
    """Application transactions pooled over windows of runs: count, failures, worst, p50, p99."""
    txs: list[tuple[Run, Transaction]] = [(run, t) for run, start, end in windows for t in run.during(start, end)]
    latencies = [t[1] for _, t in txs]
    errors: dict[str, int] = {}
    for run, start, end in windows:
        for t in run.during(start, end):
            if t[3]:
                errors[t[3]] = errors.get(t[3], 0) + 1
    # A pgbench client that aborted (an error other than a serialization failure or deadlock)
    # sends nothing more: each counts as a failed transaction.
    for run, _, _ in windows:
        aborted = [p for p in run.problems if "abort" in p]
        if aborted:
            errors["client aborted"] = errors.get("client aborted", 0) + len(aborted)
    worst_run, worst = max(txs, key=lambda rt: rt[1][1]) if txs else (None, None)
    # The p99 the target compares: the operations the baseline runs too. The dashboard reads
    # exist only once phase 5 has created the views, so no traffic without a migration has them.
    same = [t[1] for _, t in txs if t[2] in BASELINE_OPS]
    by_op = {op: round(percentile([t[1] for _, t in txs if t[2] == op], 99), 2)
             for op in sorted({t[2] for _, t in txs})}
    return {"transactions": len(txs), "errors_total": sum(errors.values()), "errors": errors,
            "worst_ms": round(worst[1], 1) if worst else None, "worst_op": worst[2] if worst else None,
            "worst_at_s": round(worst[0] - worst_run.t0, 2) if worst else None,
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "p99_same_ops_ms": round(percentile(same, 99), 2), "p99_by_op_ms": by_op}


@dataclass
class Side:
    """All the runs of one side ((a), (b) or the baseline), over the rounds."""

    name: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.error is None for r in self.runs)

    @property
    def wall(self) -> float:
        return sum(r.wall for r in self.runs) / len(self.runs) if self.runs else float("nan")

    def phase_wall(self, phase: str) -> float | None:
        walls = [r.spans[phase][1] - r.spans[phase][0] for r in self.runs if phase in r.spans]
        return sum(walls) / len(walls) if walls else None

    def app(self, phase: str | None = None) -> dict[str, Any]:
        if phase is None:
            return app_stats([(r, r.t0, r.t1) for r in self.runs])
        return app_stats([(r, *r.spans[phase]) for r in self.runs if phase in r.spans])

    def locks(self) -> dict[str, Any]:
        found = sorted((e for r in self.runs for e in r.lock_episodes()), key=lambda e: -e["waited_ms"])
        app = [e for e in found if e["application_name"] == APP_NAME]
        other = [e for e in found if e["application_name"] != APP_NAME]
        return {"app_episodes": len(app), "app_max_ms": app[0]["waited_ms"] if app else 0.0,
                "migration_episodes": len(other), "migration_max_ms": other[0]["waited_ms"] if other else 0.0,
                "samples": sum(len([s for s in r.samples if r.t0 <= s["at"] <= r.t1]) for r in self.runs),
                "longest": found[:10]}

    def without_phase6(self) -> float | None:
        six = self.phase_wall("6")
        return None if six is None else self.wall - six

    def summary(self) -> dict[str, Any]:
        phases = {p: {"wall_s": round(w, 2), **{k: self.app(p)[k] for k in ("worst_ms", "p99_ms")}}
                  for p in PHASES if (w := self.phase_wall(p)) is not None}
        if phases:
            phases["other"] = {"wall_s": round(self.wall - sum(v["wall_s"] for v in phases.values()), 2)}
        return {"label": self.label, "ok": self.ok, "rounds": len(self.runs), "wall_s": round(self.wall, 2),
                "phases": phases, "app": self.app(), "locks": self.locks(),
                "errors": [r.error for r in self.runs if r.error]}


class QueueSampler:
    """The transition's deferred work while a run goes on: every QUEUE_SAMPLE_S, its depth and
    the age of its oldest entry (migration_ledger.transition_queue_state(), once phase 3 has made
    it). stop(), called when the traffic has stopped, goes on sampling until the queue is empty
    (or `limit_s` passed): how long the drain takes to catch up once the writes stop."""

    def __init__(self, db: dict[str, Any]) -> None:
        self.db = db
        self.samples: list[tuple[float, int, float]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> QueueSampler:
        self.thread.start()
        return self

    def _connect(self) -> Any:
        conn = psycopg2.connect(host=self.db["host"], port=self.db["port"], user=self.db["user"],
                                password=self.db["password"], dbname=self.db["dbname"],
                                application_name="bench-queue", connect_timeout=10)
        conn.autocommit = True
        return conn

    def _sample(self, cur: Any) -> tuple[int, float] | None:
        cur.execute("SELECT to_regprocedure('migration_ledger.transition_queue_state()') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT depth, coalesce(oldest_age_s, 0) FROM migration_ledger.transition_queue_state()")
        depth, age = cur.fetchone()
        return int(depth), float(age)

    def _run(self) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                while not self.stopping.is_set():
                    found = self._sample(cur)
                    if found is not None:
                        self.samples.append((time.time(), *found))
                    self.stopping.wait(QUEUE_SAMPLE_S)
        except psycopg2.Error:
            pass  # the copy went away (a failed run's cleanup): the samples so far stand
        finally:
            conn.close()

    def stop(self, limit_s: float) -> dict[str, Any]:
        traffic_stopped = time.time()
        self.stopping.set()
        self.thread.join(timeout=10)
        drained_s: float | None = None
        last_depth: int | None = None
        try:
            conn = self._connect()
        except psycopg2.Error:
            conn = None
        if conn is not None:
            try:
                with conn.cursor() as cur:
                    while time.time() - traffic_stopped < limit_s:
                        found = self._sample(cur)
                        if found is None:
                            break
                        last_depth = found[0]
                        if last_depth == 0:
                            drained_s = time.time() - traffic_stopped
                            break
                        time.sleep(QUEUE_SAMPLE_S)
            finally:
                conn.close()
        ages = [age for _, _, age in self.samples]
        depths = [depth for _, depth, _ in self.samples]
        if not ages:
            return {"sampled": 0}
        return {"sampled": len(ages), "age_p50_s": round(percentile(ages, 50), 3),
                "age_p99_s": round(percentile(ages, 99), 3), "age_max_s": round(max(ages), 3),
                "depth_max": max(depths), "depth_p99": round(percentile([float(d) for d in depths], 99), 1),
                "drained_after_traffic_s": None if drained_s is None else round(drained_s, 2),
                "depth_at_limit": None if drained_s is not None else last_depth}


def measure(name: str, label: str, info: dict[str, Any], args: argparse.Namespace, workdir: Path,
            procedure: Any, db: dict[str, Any] | None = None, dashboard_share: float | None = None) -> Run:
    """The traffic from before `procedure` (None: the baseline's length of nothing) until after
    it, on a fresh copy, dropped after; or on `db`, which the caller keeps."""
    run = Run(name)
    own = db is None
    db = fresh_copy(info, f"bench_{name}") if own else db
    print(f"bench: {label}: traffic on {'a fresh' if own else 'the migrated'} copy ...", flush=True)
    share = args.dashboard_share if dashboard_share is None else dashboard_share
    traffic = OpenLoop(args.pgbench, db, args.rate, args.scale, workdir, clients=args.clients,
                       dashboard_share=share, progress=args.app_signal is not None).start()
    if args.app_signal is not None:
        args.app_signal.follow(Path(traffic.streams[0].stderr.name))
    sampler = LockSampler(db).start()
    queue = QueueSampler(db).start() if procedure is not None else None
    try:
        time.sleep(args.lead_s)
        run.t0 = time.time()
        if procedure is None:
            time.sleep(args.baseline_s)
        else:
            try:
                result = procedure(db, workdir)
                run.spans, run.steps = result["spans"], result["steps"]
            except ProcedureFailed as exc:
                run.spans, run.steps, run.error = exc.spans, exc.steps, str(exc)
                print(f"bench: {label} FAILED: {exc}", file=sys.stderr)
        run.t1 = time.time()
        time.sleep(args.tail_s)
    finally:
        if args.app_signal is not None:
            args.app_signal.follow(None)
        run.transactions, run.problems = traffic.stop()
        run.samples = sampler.stop()
        if queue is not None:
            run.queue = queue.stop(TARGET_QUEUE_DRAINED_S * 3)
        if own:
            drop(info, db["dbname"])
    print(f"bench: {label}: {run.wall:.1f} s, {len(run.transactions)} application transactions", flush=True)
    return run


# --- the table ---------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float | int) else str(value)


def ratio(b: Any, a: Any) -> str:
    try:
        return f"{b / a:.2f}x" if a and not math.isnan(b / a) else "-"
    except TypeError:
        return "-"


def judge(b: Side, floor: list[dict[str, Any]], traffic: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, at the main share: the application keeps its latency through the whole
    migration (failures, worst, p99 against the machine's floor), the migration takes at most
    twice as long as on a quiet copy, the transition costs the application little capacity, and
    the deferred work stays young and drains when the writes stop."""
    ab = b.app()
    floor1 = next((f for f in floor if f["busy_sessions"] == 1), None)
    floor_p99 = floor1["p99_ms"] if floor1 else None
    opened = traffic.get("transition_capacity") or {}
    quiet = opened.get("quiet_wall_s")
    wall_ratio = b.wall / quiet if b.runs and quiet else float("nan")
    targets = [
        {"target": "(b) zero failed application transactions", "observed": ab["errors_total"],
         "met": b.ok and ab["errors_total"] == 0},
        {"target": f"(b) worst application transaction < {TARGET_WORST_MS:.0f} ms",
         "observed": f"{fmt(ab['worst_ms'])} ms", "met": b.ok and (ab["worst_ms"] or 0) < TARGET_WORST_MS},
        {"target": f"(b) p99 <= {TARGET_P99_FLOOR_FACTOR}x the machine's floor (the same traffic beside one "
                   f"CPU-burning session: {fmt(floor_p99, 2)} ms; operations: {', '.join(BASELINE_OPS)})",
         "observed": f"{fmt(ab['p99_same_ops_ms'], 2)} ms = {ratio(ab['p99_same_ops_ms'], floor_p99)}",
         "met": b.ok and floor_p99 is not None and ab["p99_same_ops_ms"] <= TARGET_P99_FLOOR_FACTOR * floor_p99},
        {"target": f"(b) wall under the traffic <= {TARGET_WALL_QUIET_RATIO:.0f}x the same migration on a quiet copy",
         "observed": f"{b.wall:.1f} s / {fmt(quiet)} s = {wall_ratio:.2f}x",
         "met": b.ok and bool(quiet) and wall_ratio <= TARGET_WALL_QUIET_RATIO},
    ]
    for key, label in (("tps", "today's mix"), ("read_flip_install_tps", "read+flip+install in one transaction")):
        before = traffic.get("capacity_tps" if key == "tps" else "capacity_read_flip_install_tps")
        during = opened.get(key)
        targets.append({"target": f"capacity with the transition open >= {TARGET_CAPACITY_RATIO}x before ({label})",
                        "observed": f"{fmt(during)} / {fmt(before)} = {ratio(during, before)}",
                        "met": bool(during and before) and during / before >= TARGET_CAPACITY_RATIO})
    queue = queue_summary(b)
    targets.append({"target": f"(b) deferred work: p99 age of the oldest entry < {TARGET_QUEUE_AGE_P99_S:.0f} s",
                    "observed": f"{fmt(queue.get('age_p99_s'), 2)} s (max {fmt(queue.get('age_max_s'), 2)} s, "
                                f"{queue.get('sampled', 0)} samples)",
                    "met": bool(queue.get("sampled")) and queue["age_p99_s"] < TARGET_QUEUE_AGE_P99_S})
    targets.append({"target": f"(b) deferred work drained to zero within {TARGET_QUEUE_DRAINED_S:.0f} s "
                              "after the traffic stops",
                    "observed": f"{fmt(queue.get('drained_after_traffic_s'), 2)} s"
                                + (f" (depth {queue['depth_at_limit']} when the bench gave up)"
                                   if queue.get("depth_at_limit") else ""),
                    "met": queue.get("drained_after_traffic_s") is not None
                    and queue["drained_after_traffic_s"] <= TARGET_QUEUE_DRAINED_S})
    return targets


def queue_summary(side: Side) -> dict[str, Any]:
    """The deferred work over a side's runs: the worst run's figures."""
    found = [r.queue for r in side.runs if r.queue.get("sampled")]
    if not found:
        return {}
    worst = max(found, key=lambda q: (q["age_p99_s"], q.get("drained_after_traffic_s") or 1e9))
    return {**worst, "sampled": sum(q["sampled"] for q in found)}


def table(base: Side, a: Side, b: Side, targets: list[dict[str, Any]], fixed: dict[str, Any] | None,
          floor: list[dict[str, Any]], traffic: dict[str, Any], curve: list[dict[str, Any]]) -> str:
    sa, sb = a.summary(), b.summary()
    width = 26
    rounds = max(len(a.runs), len(b.runs))
    head = f"{'':<{width}} {'(a) strategy, psql':>28} | {'(b) migrate.yml phase=all':>28} | {'b/a':>6}"
    cols = f"{'wall s':>8} {'worst ms':>9} {'p99 ms':>9}"
    sub = f"{'':<{width}} {cols} | {cols} | {'wall':>6}"
    share = f"{100 * traffic['share']:.0f}% of " if traffic.get("share") else "fixed; "
    lines = [f"traffic: today's application, open loop at {traffic['rate']:g} transactions/s ({share}the "
             f"capacity {traffic['capacity_tps']:g}/s measured on this database), latency from each "
             f"transaction's scheduled start; dashboard reads at {100 * traffic['dashboard_share']:.0f}% "
             "of that once phase 5 made the views",
             f"{rounds} round(s), walls are means; worst and p99 over every round's transactions",
             head, sub, "-" * len(sub)]
    for phase in [*PHASES, "other"]:
        ra, rb = sa["phases"].get(phase, {}), sb["phases"].get(phase, {})
        name = f"phase {phase} {PHASE_TITLES[phase]}" if phase != "other" else "between phases (ansible)"
        lines.append(f"{name:<{width}} {fmt(ra.get('wall_s')):>8} {fmt(ra.get('worst_ms')):>9} "
                     f"{fmt(ra.get('p99_ms'), 2):>9} | {fmt(rb.get('wall_s')):>8} {fmt(rb.get('worst_ms')):>9} "
                     f"{fmt(rb.get('p99_ms'), 2):>9} | {ratio(rb.get('wall_s'), ra.get('wall_s')):>6}")
    lines.append("-" * len(sub))
    aa, ab, a0 = sa["app"], sb["app"], base.app()
    lines.append(f"{'total':<{width}} {fmt(a.wall):>8} {fmt(aa['worst_ms']):>9} {fmt(aa['p99_ms'], 2):>9} | "
                 f"{fmt(b.wall):>8} {fmt(ab['worst_ms']):>9} {fmt(ab['p99_ms'], 2):>9} | {ratio(b.wall, a.wall):>6}")
    lines.append("")
    la, lb = sa["locks"], sb["locks"]
    rows = [
        ("application transactions", aa["transactions"], ab["transactions"]),
        ("failed transactions", aa["errors_total"], ab["errors_total"]),
        ("worst transaction (op, at s)", f"{fmt(aa['worst_ms'])} ms ({aa['worst_op']}, {fmt(aa['worst_at_s'])})",
         f"{fmt(ab['worst_ms'])} ms ({ab['worst_op']}, {fmt(ab['worst_at_s'])})"),
        ("p50 / p99 ms", f"{fmt(aa['p50_ms'], 2)} / {fmt(aa['p99_ms'], 2)}",
         f"{fmt(ab['p50_ms'], 2)} / {fmt(ab['p99_ms'], 2)}"),
        ("p99, baseline's ops / baseline", f"{fmt(aa['p99_same_ops_ms'], 2)} ms, "
         f"{ratio(aa['p99_same_ops_ms'], a0['p99_ms'])}",
         f"{fmt(ab['p99_same_ops_ms'], 2)} ms, {ratio(ab['p99_same_ops_ms'], a0['p99_ms'])}"),
        ("p99 by op ms", " ".join(f"{k[:4]} {v:.1f}" for k, v in aa["p99_by_op_ms"].items()),
         " ".join(f"{k[:4]} {v:.1f}" for k, v in ab["p99_by_op_ms"].items())),
        ("app lock waits: seen, max ms", f"{la['app_episodes']}, {fmt(la['app_max_ms'])}",
         f"{lb['app_episodes']}, {fmt(lb['app_max_ms'])}"),
        ("migration lock waits: seen, max", f"{la['migration_episodes']}, {fmt(la['migration_max_ms'])}",
         f"{lb['migration_episodes']}, {fmt(lb['migration_max_ms'])}"),
    ]
    for name, va, vb in rows:
        lines.append(f"{name:<{width + 6}} {str(va):>28} | {str(vb):>28}")
    lines.append(f"baseline, no migration ({fmt(base.wall)} s x {len(base.runs)}): {a0['transactions']} transactions, "
                 f"p50 {fmt(a0['p50_ms'], 2)} ms, p99 {fmt(a0['p99_ms'], 2)} ms, worst {fmt(a0['worst_ms'])} ms, "
                 f"{a0['errors_total']} failed")
    wa, wb = a.without_phase6(), b.without_phase6()
    if wa is not None and wb is not None:
        lines.append(f"without phase 6 (the same work on both sides): (a) {wa:.1f} s, (b) {wb:.1f} s, {ratio(wb, wa)}")
    profiles = [r.steps["ansible"] for r in b.runs if r.steps.get("ansible")]
    if profiles:
        roles: dict[str, list[float]] = {}
        for prof in profiles:
            for role, v in prof["by_role"].items():
                roles.setdefault(role, [0.0, 0])
                roles[role][0] += v["seconds"] / len(profiles)
                roles[role][1] += v["tasks"] / len(profiles)
        top = ", ".join(f"{k} {v[0]:.0f} s/{v[1]:.0f}" for k, v in sorted(roles.items(), key=lambda kv: -kv[1][0])[:9])
        tasks = sum(p["tasks"] for p in profiles) / len(profiles)
        seconds = sum(p["seconds"] for p in profiles) / len(profiles)
        lines.append(f"(b) ansible: {tasks:.0f} tasks, {seconds:.0f} s in tasks; seconds/tasks by role: {top}")
    if fixed and not fixed["error"] and a.runs and b.runs:
        rest = b.wall - fixed["wall_s"]
        lines.append(f"(b)'s fixed cost, the same playbook on {fixed['scale']} clients: {fixed['wall_s']:.1f} s "
                     f"({fixed['tasks']} tasks); (b) without it: {rest:.1f} s, {ratio(rest, a.wall)} of (a)")
    for run in b.runs:
        for part, t in (run.steps.get("throttle") or {}).items():
            lines.append(f"(b) phase 3 throttle, {part}: throttled {t.get('throttled_s')} s (slowed down "
                         f"{t.get('slowed_s')} s, paused {t.get('paused_s')} s)"
                         + (f" because of {', '.join(t['because'])}" if t.get("because") else ""))
        if "batches_cut" in run.steps:
            lines.append(f"(b) phase 3 batches: {run.steps.get('backfill_batches')}, slowest "
                         f"{run.steps.get('slowest_batch_ms')} ms, {run.steps['batches_cut']} cut at their target, "
                         f"{run.steps.get('batches_over_target')} over it"
                         + (f", {run.steps['batches_cancelled']} cancelled and run again"
                            if "batches_cancelled" in run.steps else ""))
    opened = traffic.get("transition_capacity") or {}
    if opened.get("tps"):
        lines.append(f"capacity with the transition open (the sync in every write): {opened['tps']:g}/s = "
                     f"{ratio(opened['tps'], traffic['capacity_tps'])} of the {traffic['capacity_tps']:g}/s before; "
                     f"the traffic ({traffic['rate']:g}/s) is {100 * traffic['rate'] / opened['tps']:.0f}% of it")
    if opened.get("read_flip_install_tps"):
        lines.append(f"capacity, every transaction reading, flipping and installing: "
                     f"{opened['read_flip_install_tps']:g}/s with the transition open = "
                     f"{ratio(opened['read_flip_install_tps'], traffic.get('capacity_read_flip_install_tps'))} "
                     f"of the {fmt(traffic.get('capacity_read_flip_install_tps'))}/s before")
    if opened.get("quiet_wall_s"):
        lines.append(f"(b) on a quiet copy (no traffic): {opened['quiet_wall_s']:.1f} s; under the traffic "
                     f"{b.wall:.1f} s = {ratio(b.wall, opened['quiet_wall_s'])}; (a), for reference, {fmt(a.wall)} s")
    queue = queue_summary(b)
    if queue:
        lines.append(f"(b) deferred work: oldest entry's age p50 {fmt(queue['age_p50_s'], 2)} s, p99 "
                     f"{fmt(queue['age_p99_s'], 2)} s, max {fmt(queue['age_max_s'], 2)} s; depth max "
                     f"{queue['depth_max']}; empty {fmt(queue.get('drained_after_traffic_s'), 2)} s after the "
                     "traffic stopped")
    alone = opened.get("traffic_alone") or {}
    if alone.get("transactions"):
        lines.append(f"the traffic alone with the transition open (no migration, no dashboard reads; the sync's "
                     f"cost, (b)'s floor in phases 3 and 4): "
                     f"p99 {fmt(alone['p99_same_ops_ms'], 2)} ms = {ratio(alone['p99_same_ops_ms'], a0['p99_ms'])}, "
                     f"worst {fmt(alone['worst_ms'])} ms, {alone['errors_total']} failed")
    if floor:
        lines.append("machine floor, no migration: the same traffic beside sessions that only burn CPU: " + "; ".join(
            f"{f['busy_sessions']} busy: p99 {fmt(f['p99_ms'], 2)} ms = "
            f"{ratio(f['p99_ms'], a0['p99_ms'])} of the baseline"
            for f in floor))
    if curve:
        lines += ["", "the curve: the same traffic at other shares of the capacity before (baseline, floor and (b) "
                      "at each; (b)'s p99 over the floor's)",
                  f"{'share':>6} {'rate/s':>8} {'base p99':>9} {'floor p99':>10} {'(b) p99':>9} {'/floor':>7} "
                  f"{'worst ms':>9} {'failed':>7} {'(b) wall':>9} {'/quiet':>7} {'age p99 s':>10} {'empty s':>8}"]
        quiet = opened.get("quiet_wall_s")
        for point in curve:
            lines.append(f"{100 * point['share']:>5.0f}% {point['rate']:>8g} {fmt(point['baseline_p99_ms'], 2):>9} "
                         f"{fmt(point['floor_p99_ms'], 2):>10} {fmt(point['b_p99_ms'], 2):>9} "
                         f"{ratio(point['b_p99_ms'], point['floor_p99_ms']):>7} {fmt(point['b_worst_ms']):>9} "
                         f"{str(point['b_failed']):>7} {fmt(point['b_wall_s']):>9} "
                         f"{ratio(point['b_wall_s'], quiet):>7} "
                         f"{fmt(point['queue_age_p99_s'], 2):>10} {fmt(point['queue_drained_s'], 2):>8}"
                         + ("  FAILED" if not point["b_ok"] else ""))
    for side in (a, b):
        for run in side.runs:
            if run.error:
                lines.append(f"{side.label} FAILED: {run.error[:300]}")
    lines.append("")
    for t in targets:
        lines.append(f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['observed']}")
    return "\n".join(lines)


def plot(sides: list[Side], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r requirements.txt): no PNG"
    shown = [(side, side.runs[0]) for side in sides if side.runs]
    fig, axes = plt.subplots(len(shown), 1, figsize=(14, 4.2 * len(shown)), squeeze=False)
    colors = {"read": "tab:blue", "flip": "tab:red", "install": "tab:green", "new_override": "tab:olive",
              "dashboard": "tab:purple"}
    for ax, (side, run) in zip(axes[:, 0], shown, strict=True):
        for op, color in colors.items():
            pts = [(t[0] - run.t0, t[1]) for t in run.transactions if t[2] == op and not t[3]]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=3, color=color, label=op, alpha=0.6, linewidths=0)
        bad = [(t[0] - run.t0, t[1]) for t in run.transactions if t[3]]
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=12, color="black", marker="x", label="failed")
        for n, (phase, (start, end)) in enumerate(sorted(run.spans.items())):
            ax.axvspan(start - run.t0, end - run.t0, color="0.85" if n % 2 else "0.93", zorder=0)
            ax.text((start + end) / 2 - run.t0, 0.97 - 0.05 * (n % 2), f"phase {phase}",
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
        ax.axvline(0, color="0.3", linewidth=0.8)
        ax.axvline(run.wall, color="0.3", linewidth=0.8)
        ax.axhline(TARGET_WORST_MS, color="tab:orange", linestyle="--", linewidth=1, label="100 ms")
        ax.set_yscale("log")
        ax.set_ylabel("transaction latency, ms")
        s = app_stats([(run, run.t0, run.t1)])
        ax.set_title(f"{side.label} (round 1): {run.wall:.1f} s, worst {fmt(s['worst_ms'])} ms, "
                     f"p99 {fmt(s['p99_ms'], 2)} ms, {s['errors_total']} failed"
                     + (" - FAILED" if run.error else ""), fontsize=10)
        ax.legend(loc="upper right", fontsize=7, markerscale=3, ncols=6)
    axes[-1, 0].set_xlabel("seconds since the migration started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def measure_fixed(info: dict[str, Any], workdir: Path, procedure: Any) -> dict[str, Any]:
    """(b) on FIXED_SCALE clients, without traffic: what migrate.yml costs whatever the data -
    Ansible's start, its tasks, the ledger, monitoring - measured in the same run."""
    print(f"bench: (b) on {FIXED_SCALE} clients, its fixed cost ...", flush=True)
    seed_template(info, FIXED_SCALE, FIXED_TEMPLATE)
    db = fresh_copy(info, "bench_fixed", FIXED_TEMPLATE)
    started = time.time()
    try:
        result = procedure(db, workdir)
        error = None
    except ProcedureFailed as exc:
        result, error = {"steps": exc.steps}, str(exc)
    finally:
        drop(info, db["dbname"])
    wall = time.time() - started
    profile = result["steps"].get("ansible", {})
    print(f"bench: (b) on {FIXED_SCALE} clients: {wall:.1f} s", flush=True)
    return {"scale": FIXED_SCALE, "wall_s": round(wall, 2), "error": error,
            "tasks": profile.get("tasks"), "task_seconds": profile.get("seconds")}


def measure_transition_capacity(info: dict[str, Any], args: argparse.Namespace, workdir: Path,
                                procedure: Any) -> dict[str, Any]:
    """The same mix, unthrottled, on a copy that (b) migrated without traffic: what today's
    application can do while the transition is open (the sync in every write), against the
    capacity measured before the migration. Traffic above it cannot keep its schedule, however
    the migration yields."""
    print("bench: (b) on a quiet copy, then the capacity with the transition open there ...", flush=True)
    db = fresh_copy(info, "bench_transition")
    alone: dict[str, Any] = {}
    measured: dict[str, Any] = {"tps": None}
    second: dict[str, Any] = {"tps": None}
    quiet_wall: float | None = None
    quiet_phases: dict[str, float] = {}
    try:
        started = time.time()
        result = procedure(db, workdir)
        quiet_wall = time.time() - started
        quiet_phases = {phase: round(end - start, 2) for phase, (start, end) in result["spans"].items()}
        measured = capacity(args.pgbench, db, args.scale, args.clients, args.capacity_s)
        second = capacity(args.pgbench, db, args.scale, args.clients, args.capacity_s, READ_FLIP_INSTALL_MIX)
        alone = traffic_alone(info, db, args, workdir)
        error = None
    except (ProcedureFailed, RuntimeError) as exc:
        error = str(exc)
    finally:
        drop(info, db["dbname"])
    tps, tps2 = measured["tps"], second["tps"]
    print(f"bench: (b) quiet {fmt(quiet_wall)} s; capacity with the transition open: {fmt(tps)} transactions/s "
          f"(read+flip+install: {fmt(tps2)}/s); the traffic alone there: "
          f"p99 {fmt(alone.get('p99_same_ops_ms'), 2)} ms, worst {fmt(alone.get('worst_ms'))} ms", flush=True)
    return {"tps": round(tps, 1) if tps else None, "read_flip_install_tps": round(tps2, 1) if tps2 else None,
            "quiet_wall_s": round(quiet_wall, 2) if quiet_wall else None, "quiet_phase_wall_s": quiet_phases,
            "error": error, "traffic_alone": alone}


def traffic_alone(info: dict[str, Any], db: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Today's application's traffic, as long as the baseline, on a copy with the transition
    open, no migration running and no dashboard reads (the baseline has none): what the sync in
    every write alone does to the application's latency, (b)'s floor in phases 3 and 4."""
    run = measure("transition_alone", "the traffic alone with the transition open", info, args, workdir,
                  None, db=db, dashboard_share=0.0)
    stats = run.summary()["app"]
    return {key: stats[key] for key in ("transactions", "errors_total", "worst_ms", "p50_ms", "p99_same_ops_ms")}


def burn_cpus(busy: int, seconds: float) -> Any:
    """A procedure for measure(): `busy` database sessions each keeping one CPU busy (a tight
    generate_series) for `seconds`; no migration. What the workload's p99 becomes when that
    much of the machine is taken, whoever takes it: this machine's floor for the p99 target."""

    def procedure(db: dict[str, Any], workdir: Path) -> dict[str, Any]:
        del workdir
        stop = time.time() + seconds

        def burn() -> None:
            conn = psycopg2.connect(host=db["host"], port=db["port"], user=db["user"],
                                    password=db["password"], dbname=db["dbname"], application_name="bench-burn")
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    while time.time() < stop:
                        cur.execute("SELECT count(*) FROM generate_series(1, 2000000)")
            finally:
                conn.close()

        threads = [threading.Thread(target=burn, daemon=True) for _ in range(busy)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"spans": {}, "steps": {"busy_sessions": busy}}

    return procedure


def measure_floor(info: dict[str, Any], args: argparse.Namespace, base_dir: Path,
                  busy_counts: tuple[int, ...] = (1, 2), tag: str = "") -> list[dict[str, Any]]:
    floor = []
    for busy in busy_counts:
        workdir = base_dir / "work" / f"floor-{busy}{tag}"
        workdir.mkdir(parents=True)
        run = measure(f"floor{busy}", f"floor: traffic beside {busy} busy session(s)", info, args, workdir,
                      burn_cpus(busy, args.floor_s))
        stats = run.summary()["app"]
        floor.append({"busy_sessions": busy, "p99_ms": stats["p99_same_ops_ms"],
                      "p50_ms": stats["p50_ms"], "transactions": stats["transactions"]})
    return floor


def point_summary(share: float, rate: float, base: Side, b: Side, floor: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the curve: the baseline's, the floor's (one busy session) and (b)'s figures."""
    ab = b.app()
    floor1 = next((f for f in floor if f["busy_sessions"] == 1), {})
    queue = queue_summary(b)
    return {"share": share, "rate": rate, "baseline_p99_ms": base.app()["p99_ms"] if base.runs else None,
            "floor_p99_ms": floor1.get("p99_ms"), "b_p99_ms": ab["p99_same_ops_ms"], "b_worst_ms": ab["worst_ms"],
            "b_failed": ab["errors_total"], "b_wall_s": round(b.wall, 2) if b.runs else None, "b_ok": b.ok,
            "queue_age_p99_s": queue.get("age_p99_s"), "queue_drained_s": queue.get("drained_after_traffic_s")}


def curve_point(info: dict[str, Any], args: argparse.Namespace, base_dir: Path, share: float,
                capacity_tps: float, procedure: Any) -> dict[str, Any]:
    """The baseline, the floor (one busy session) and (b) at another share of the capacity."""
    rate = round(share * capacity_tps, 1)
    point_args = argparse.Namespace(**{**vars(args), "rate": rate})
    tag = f"-{round(100 * share)}"
    print(f"bench: the curve at {100 * share:.0f}% ({rate}/s) ...", flush=True)
    base, b = Side("baseline", "baseline"), Side("b", "(b)")
    for side, proc in ((base, None), (b, procedure)):
        workdir = base_dir / "work" / f"curve{tag}-{side.name}"
        workdir.mkdir(parents=True)
        side.runs.append(measure(f"{side.name}{tag.replace('-', '_')}", f"{side.label} at {100 * share:.0f}%",
                                 info, point_args, workdir, proc))
    floor = measure_floor(info, point_args, base_dir, (1,), tag)
    return point_summary(share, rate, base, b, floor)


def save_transactions(run: Run, path: Path) -> None:
    """Every application transaction of a run, for a closer look: seconds since the run started,
    latency, operation, error."""
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "latency_ms", "op", "error"])
        for start, latency, op, error in run.transactions:
            writer.writerow([f"{start - run.t0:.4f}", f"{latency:.3f}", op, error or ""])


def schedule(rounds: int) -> list[str]:
    """The baseline, then (a) and (b) in ABBA order (a linear drift of the machine's load
    cancels out of the means), then the baseline again when there is more than one round."""
    order: list[str] = ["baseline"]
    for n in range(rounds):
        order += ["a", "b"] if n % 2 == 0 else ["b", "a"]
    return order + (["baseline"] if rounds > 1 else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--scale", type=int, default=100000, help="clients (100000 -> 1,005,000 overrides)")
    parser.add_argument("--rounds", type=int, default=1, help="(a)/(b) pairs, in ABBA order")
    parser.add_argument("--rate-share", type=float, default=0.30,
                        help="the traffic's rate as a share of the capacity measured at the start (0.30)")
    parser.add_argument("--rate", type=float, help="a fixed rate (transactions/s) instead of --rate-share")
    parser.add_argument("--curve", default="0.10,0.50",
                        help="other shares of the capacity to run the baseline, the floor and (b) at, after the "
                             "main one (comma-separated; '' for none): how much headroom the migration needs")
    parser.add_argument("--clients", type=int, default=8, help="pgbench connections of the application stream")
    parser.add_argument("--capacity-s", type=float, default=10.0, help="length of the capacity measurement")
    parser.add_argument("--dashboard-share", type=float, default=0.10,
                        help="rate of the dashboard stream (once phase 5 made the views), a share of --rate")
    parser.add_argument("--baseline-s", type=float, default=20.0, help="length of the traffic-only baseline")
    parser.add_argument("--lead-s", type=float, default=5.0, help="traffic before each run starts")
    parser.add_argument("--tail-s", type=float, default=3.0, help="traffic after each run ends")
    parser.add_argument("--only", choices=["a", "b"], help="run one side only (with the baseline)")
    parser.add_argument("--datadir", help="keep the cluster here between benches (default: a temporary one)")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose migrate.yml (b) runs")
    parser.add_argument("--out", default=str(REPO / "reports"), help="where the JSON and the PNG go")
    parser.add_argument("--extra-vars", default="{}", help="JSON extra vars for (b), beyond phase=all")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--client-nice", type=int, default=10,
                        help="niceness of the migration's client side (psql, pg_dump; ansible-playbook), both sides")
    parser.add_argument("--floor-s", type=float, default=10.0,
                        help="length of each machine-floor run (traffic beside 1, then 2 busy sessions)")
    parser.add_argument("--no-floor", action="store_true", help="skip the machine-floor runs")
    parser.add_argument("--no-transition-capacity", action="store_true",
                        help="skip the measurements with the transition open (a copy migrated without "
                             "traffic): the mix's capacity there, and the traffic alone there")
    parser.add_argument("--no-fixed-cost", action="store_true",
                        help=f"skip (b) on {FIXED_SCALE} clients (its fixed cost, whatever the data)")
    parser.add_argument("--no-app-signal", action="store_true",
                        help="give (b)'s throttle no application signal (tools/bench/appsignal.py: pgbench's "
                             "latency through a Prometheus of the bench's own)")
    args = parser.parse_args(argv)
    args.app_signal = None if args.no_app_signal else AppSignal()
    # The application's signal first: --extra-vars overrides it.
    extra_vars = {**(args.app_signal.extra_vars() if args.app_signal else {}), **json.loads(args.extra_vars)}
    CLIENT_NICE[0] = args.client_nice

    base_dir = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-"))
    base_dir.chmod(0o711)
    datadir = Path(args.datadir) if args.datadir else base_dir / "data"
    started = time.strftime("%Y%m%d-%H%M%S")
    fixed: dict[str, Any] | None = None
    floor: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sides = {"baseline": Side("baseline", "baseline: traffic only"),
             "a": Side("a", "(a) strategy via psql"),
             "b": Side("b", "(b) migrate.yml -e phase=all")}
    procedures = {"baseline": None, "a": run_strategy,
                  "b": lambda db, wd: run_playbook(db, wd, Path(args.repo), extra_vars)}
    try:
        info = pgcluster.start_cluster(datadir, password="bench")
        info = pgcluster.configure(info, bench_settings(args))
        print(f"bench: cluster on port {info['port']}; seeding {args.scale} clients ...", flush=True)
        seeded = seed_template(info, args.scale)
        print(f"bench: template ready ({seeded:.0f} s)", flush=True)
        args.pgbench = pgcluster.find_pg_bin("pgbench")
        db = fresh_copy(info, "bench_capacity")
        try:
            measured = capacity(args.pgbench, db, args.scale, args.clients, args.capacity_s)
            second = capacity(args.pgbench, db, args.scale, args.clients, args.capacity_s, READ_FLIP_INSTALL_MIX)
        finally:
            drop(info, db["dbname"])
        traffic = {"capacity_tps": round(measured["tps"], 1), "share": None if args.rate else args.rate_share,
                   "capacity_read_flip_install_tps": round(second["tps"], 1),
                   "rate": round(args.rate or args.rate_share * measured["tps"], 1), "clients": args.clients,
                   "dashboard_share": args.dashboard_share, "mix": [[op, weight] for op, _, weight in APP_MIX]}
        args.rate = traffic["rate"]
        print(f"bench: capacity {traffic['capacity_tps']} transactions/s (the old application's mix, "
              f"{args.clients} connections, no rate limit); the traffic runs open loop at {args.rate} /s", flush=True)
        for n, name in enumerate(s for s in schedule(args.rounds) if s in ("baseline", args.only or s)):
            workdir = base_dir / "work" / f"{n:02d}-{name}"
            workdir.mkdir(parents=True)
            run = measure(name, sides[name].label, info, args, workdir, procedures[name])
            sides[name].runs.append(run)
            for log in sorted(workdir.glob("*.log")):
                shutil.copy(log, out / f"bench-{started}-{n:02d}-{name}-{log.name}")
            save_transactions(run, out / f"bench-{started}-{n:02d}-{name}-transactions.csv.gz")
        if not args.no_floor:
            floor = measure_floor(info, args, base_dir)
        for share in [float(x) for x in args.curve.split(",") if x.strip()] if args.only != "a" else []:
            curve.append(curve_point(info, args, base_dir, share, traffic["capacity_tps"], procedures["b"]))
        if not args.no_transition_capacity and args.only != "a":
            workdir = base_dir / "work" / "transition"
            workdir.mkdir(parents=True)
            traffic["transition_capacity"] = measure_transition_capacity(info, args, workdir, procedures["b"])
        if not args.no_fixed_cost and args.only != "a":
            workdir = base_dir / "work" / "fixed"
            workdir.mkdir(parents=True)
            fixed = measure_fixed(info, workdir, procedures["b"])
    finally:
        remove_drain_supervisors()
        if args.app_signal is not None:
            args.app_signal.close()
        if not args.datadir:
            pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base_dir, ignore_errors=True)
    base, a, b = sides["baseline"], sides["a"], sides["b"]
    targets = judge(b, floor, traffic)
    main_point = point_summary(traffic.get("share") or 0.0, traffic["rate"], base, b, floor)
    text = table(base, a, b, targets, fixed, floor, traffic, sorted([main_point, *curve], key=lambda c: c["share"]))
    print()
    print(text)
    report = {
        "started": started, "scale": args.scale, "rounds": args.rounds, "traffic": traffic,
        "extra_vars_b": extra_vars, "client_nice": args.client_nice, "server_settings": bench_settings(args),
        "host": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "sides": {name: side.summary() for name, side in sides.items()},
        "runs": [run.summary() for side in sides.values() for run in side.runs],
        "ratios_b_over_a": {"wall": round(b.wall / a.wall, 3) if a.runs and b.runs else None,
                            **{f"phase_{p}": round(wb / wa, 3) for p in PHASES
                               if (wa := a.phase_wall(p)) and (wb := b.phase_wall(p)) is not None}},
        "fixed_cost_b": fixed, "machine_floor": floor, "curve": curve, "targets": targets, "table": text,
    }
    json_path = out / f"bench-{started}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    png_path = out / f"bench-{started}.png"
    problem = plot([a, b], png_path)
    print(f"\nbench: {json_path}" + (f"\nbench: {problem}" if problem else f"\nbench: {png_path}"))
    failed = not all(side.ok for side in sides.values() if side.runs)
    return 1 if failed or (args.strict and not all(t["met"] for t in targets)) else 0


if __name__ == "__main__":
    sys.exit(main())
