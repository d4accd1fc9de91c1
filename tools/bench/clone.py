#!/usr/bin/env python3
"""make bench (the clone's part): playbooks/clone.yml against pg_dump piped into pg_restore by hand.

A benchmark, not a test: it prints figures and judges them against issue 4's aim (the clone
within 10% of the hand-made pipe), and never runs in `make test`. In one run, on two throwaway
clusters (tools/pgcluster.py; a production server seeded with migrations/ht036/baseline at --scale
clients, and a staging server), each round times, alternating which goes first:

  hand      createdb -T template0, then pg_dump -Fc | pg_restore -d (the strategy's -F c, as
            an operator would type it);
  hand -Z0  the same pipe uncompressed: the strictest hand-made reference;
  clone     ansible-playbook playbooks/clone.yml: the clone step itself (from the module's own
            timings: new database, pg_dump/pg_restore from one exported snapshot with the
            snapshot's row counts, post-data with parallel jobs, the clone's row counts compared,
            ANALYZE, the swap), and the whole playbook's wall time (Ansible start-up and the
            read-only refusal checks included).

Medians over --rounds. Ratios are clone / hand. Saves the figures as JSON under reports/. Exit
status 0, or with --strict 1 when the clone step is more than 10% slower than the hand pipe.

    tools/bench/clone.py [--scale 100000] [--rounds 3] [--jobs 2] [--method pipe] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tools"))

import pgcluster  # noqa: E402

AIM = 1.10
SOURCE_DB = "agency"
STAGING_DB = "agency_staging"
CLONE_TASK = "Clone (pg_dump, pg_restore, verify, mask, analyze, swap)"


def cluster_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)  # the postgres OS user runs the server when we are root
    return path


def admin(info: dict[str, Any]) -> Any:
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"], password=info["password"],
                            dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    return conn


def drop(info: dict[str, Any], name: str) -> None:
    conn = admin(info)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def pg_env(info: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=info["host"], PGPORT=str(info["port"]), PGUSER=info["user"], PGPASSWORD=info["password"])
    return env


def hand(source: dict[str, Any], staging: dict[str, Any], compress: bool) -> float:
    """createdb, then pg_dump -Fc | pg_restore, as an operator would run it."""
    drop(staging, STAGING_DB)
    dump_cmd = ["pg_dump", "-Fc", "-d", SOURCE_DB] + ([] if compress else ["-Z0"])
    started = time.monotonic()
    subprocess.run(["createdb", "-T", "template0", STAGING_DB], env=pg_env(staging), check=True)
    dump = subprocess.Popen(dump_cmd, env=pg_env(source), stdout=subprocess.PIPE)
    restore = subprocess.run(["pg_restore", "--exit-on-error", "-d", STAGING_DB], env=pg_env(staging),
                             stdin=dump.stdout, check=False)
    dump.stdout.close()
    if dump.wait() != 0 or restore.returncode != 0:
        raise SystemExit("the hand-made pipe failed")
    return time.monotonic() - started


def inventory(path: Path, source: dict[str, Any], staging: dict[str, Any]) -> None:
    def host(info: dict[str, Any], name: str, env: str, **extra: Any) -> dict[str, Any]:
        return {"migration_db_host": info["host"], "migration_db_port": info["port"], "migration_db_name": name,
                "migration_db_user": info["user"], "migration_db_password": info["password"],
                "migration_env": env, "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable, **extra}

    data = {"all": {"children": {"databases": {"hosts": {
        "production": host(source, SOURCE_DB, "production"),
        "staging": host(staging, STAGING_DB, "staging", clone_source="production")}}}}}
    path.write_text(json.dumps(data))


def clone(inventory_path: Path, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    """ansible-playbook playbooks/clone.yml: (wall time, the clone step's own timings)."""
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_FORCE_COLOR"}
    env.update(ANSIBLE_CONFIG=str(Path(args.repo) / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_NOCOLOR="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory_path),
           "-e", f"clone_jobs={args.jobs}", "-e", f"clone_method={args.method}",
           str(Path(args.repo) / "playbooks" / "clone.yml")]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=args.repo, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"playbooks/clone.yml failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    for play in result["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].endswith(CLONE_TASK):
                return wall, task["hosts"]["staging"]["timings"]
    raise SystemExit("the clone task's result is not in the playbook's output")


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=100000, help="clients (100000 -> 1,005,000 overrides)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--jobs", type=int, default=2, help="clone_jobs")
    parser.add_argument("--method", default="pipe", choices=["pipe", "directory"], help="clone_method")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose clone.yml runs")
    parser.add_argument("--out", default=str(REPO / "reports"), help="where the JSON goes")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the aim is missed")
    args = parser.parse_args(argv)

    base = cluster_dir("bench-clone-")
    work = Path(tempfile.mkdtemp(prefix="bench-clone-work-"))
    try:
        source = pgcluster.start_cluster(base / "source", password="bench-clone-source")
        staging = pgcluster.start_cluster(base / "staging", password="bench-clone-staging")
        started = time.monotonic()
        pgcluster.seed_database(source, SOURCE_DB, args.scale)
        print(f"seeded {args.scale} clients in {time.monotonic() - started:.1f} s", flush=True)
        conn = admin(source)
        with conn.cursor() as cur:
            cur.execute(f"SELECT pg_size_pretty(pg_database_size('{SOURCE_DB}'))")
            size = cur.fetchone()[0]
        conn.close()
        inventory(work / "hosts.json", source, staging)
        runs: dict[str, list[float]] = {"hand": [], "hand_z0": [], "clone": [], "playbook": []}
        steps: list[dict[str, float]] = []
        for n in range(args.rounds):
            order = ["hand", "hand_z0", "clone"] if n % 2 == 0 else ["clone", "hand_z0", "hand"]
            for what in order:
                if what == "clone":
                    wall, timings = clone(work / "hosts.json", args)
                    runs["clone"].append(timings["total_s"])
                    runs["playbook"].append(wall)
                    steps.append(timings)
                else:
                    runs[what].append(hand(source, staging, compress=what == "hand"))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), flush=True)
        figures = {k: median(v) for k, v in runs.items()}
        ratio = round(figures["clone"] / figures["hand"], 3)
        ratio_z0 = round(figures["clone"] / figures["hand_z0"], 3)
        ratio_playbook = round(figures["playbook"] / figures["hand"], 3)
        step_medians = {k: median([s[k] for s in steps if k in s]) for k in steps[0]}
        lines = [
            f"Clone benchmark: {args.scale} clients ({size}), {args.rounds} rounds, medians; method {args.method},"
            f" {args.jobs} jobs",
            f"  hand: createdb + pg_dump -Fc | pg_restore        {figures['hand']:8.2f} s",
            f"  hand: the same pipe, uncompressed (-Z0)         {figures['hand_z0']:8.2f} s",
            f"  clone step (roles/clone, module timings)        {figures['clone']:8.2f} s   "
            f"({', '.join(f'{k.removesuffix(chr(95) + chr(115))} {v}' for k, v in step_medians.items())})",
            f"  ansible-playbook playbooks/clone.yml, wall      {figures['playbook']:8.2f} s",
            f"  ratio clone / hand pipe:          {ratio:.3f}   (aim: <= {AIM:.2f})"
            f"  {'MET' if ratio <= AIM else 'MISSED'}",
            f"  ratio clone / hand pipe -Z0:      {ratio_z0:.3f}",
            f"  ratio playbook wall / hand pipe:  {ratio_playbook:.3f}",
        ]
        print("\n".join(lines))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"bench-clone-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.write_text(json.dumps({"scale": args.scale, "size": size, "rounds": args.rounds, "jobs": args.jobs,
                                    "method": args.method, "runs": runs, "medians": figures,
                                    "clone_steps": step_medians, "ratio": ratio, "ratio_z0": ratio_z0,
                                    "ratio_playbook": ratio_playbook, "aim": AIM}, indent=2) + "\n")
        print(f"  saved {path}")
        return 1 if args.strict and ratio > AIM else 0
    finally:
        for name in ("source", "staging"):
            pgcluster.destroy_cluster(base / name)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
