#!/usr/bin/env python3
"""make bench, fleet figure: 8 databases of 10,000 clients each, migrated with forks 1 and forks 4.

A benchmark, not a test. One throwaway cluster (tools/pgcluster.py) holds a template database
seeded once; each run gets 8 fresh copies of it (CREATE DATABASE ... TEMPLATE) and one inventory
listing them, and runs `ansible-playbook playbooks/migrate.yml -e phase=all` with every database
in one batch (migration_serial 100%), so --forks alone decides how many migrate at once. Prints
both wall times and their ratio, and saves them as JSON under reports/.

    tools/bench/fleet.py [--databases 8] [--scale 10000] [--forks 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.sql

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tools"))

import pgcluster  # noqa: E402  (tools/ is not a package)

TEMPLATE = "fleet_template"


def admin(info: dict[str, Any]) -> Any:
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                            password=info["password"], dbname="postgres")
    conn.autocommit = True
    return conn


def fresh_copies(info: dict[str, Any], prefix: str, count: int) -> list[str]:
    names = [f"{prefix}_{i}" for i in range(1, count + 1)]
    conn = admin(info)
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg2.sql.Identifier(name)))
                cur.execute(psycopg2.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    psycopg2.sql.Identifier(name), psycopg2.sql.Identifier(TEMPLATE)))
            # Roles are cluster-wide: each run starts without the one phase 5 creates.
            cur.execute("DROP ROLE IF EXISTS authenticated")
    finally:
        conn.close()
    return names


def drop_all(info: dict[str, Any], names: list[str]) -> None:
    conn = admin(info)
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg2.sql.Identifier(name)))
    finally:
        conn.close()


def write_inventory(path: Path, info: dict[str, Any], names: list[str]) -> None:
    hosts = {
        name: {
            "migration_db_host": info["host"], "migration_db_port": info["port"],
            "migration_db_name": name, "migration_db_user": info["user"],
            "migration_db_password": info["password"], "migration_env": "local",
            # As in tools/bench/bench.py and tests/helpers.py, looser still: eight databases share
            # one cluster on a small machine, and every database's background sampler and phase-3
            # insert job run at once whatever --forks says (async tasks), so a probe several times
            # slower than its baseline is the others' load, not the migration's harm.
            "migration_abort_degradation_pct": 1000, "migration_abort_min_delta_ms": 1000,
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        }
        for name in names
    }
    path.write_text(json.dumps({"all": {"children": {"databases": {"hosts": hosts}}}}))


def migrate(inventory: Path, forks: int, work: Path) -> float:
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
        str(REPO / "playbooks" / "migrate.yml"), "--forks", str(forks), "-e", "phase=all",
        "-e", json.dumps({"migration_serial": "100%", "migration_report_dir": str(work / "reports"),
                          "migration_backup_dir": str(work / "backups")}),
    ]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-2000:])
        raise SystemExit(f"fleet bench: the migration with --forks {forks} failed (rc {result.returncode})")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=int, default=8)
    parser.add_argument("--scale", type=int, default=10000)
    parser.add_argument("--forks", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    os.chmod(base, 0o711)  # the postgres OS user runs the server when we are root
    datadir = base / "data"
    info = pgcluster.start_cluster(datadir, password="bench-fleet-only")
    results: dict[str, Any] = {"databases": args.databases, "scale": args.scale, "runs": []}
    try:
        print(f"fleet bench: seeding a template of {args.scale} clients ...", flush=True)
        pgcluster.seed_database(info, TEMPLATE, args.scale)
        for forks in args.forks:
            names = fresh_copies(info, f"fleet_f{forks}", args.databases)
            work = base / f"forks{forks}"
            work.mkdir()
            write_inventory(work / "inventory.json", info, names)
            print(f"fleet bench: migrating {args.databases} databases with --forks {forks} ...", flush=True)
            seconds = migrate(work / "inventory.json", forks, work)
            results["runs"].append({"forks": forks, "seconds": round(seconds, 1)})
            drop_all(info, names)
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)

    runs = results["runs"]
    first, last = runs[0], runs[-1]
    results["ratio"] = round(first["seconds"] / last["seconds"], 2)
    print()
    print(f"Fleet: {args.databases} databases x {args.scale} clients, phase=all, one batch")
    print(f"{'forks':>6} {'wall time (s)':>14}")
    for run in runs:
        print(f"{run['forks']:>6} {run['seconds']:>14.1f}")
    print(f"ratio forks {first['forks']} / forks {last['forks']}: {results['ratio']}x "
          f"({os.cpu_count()} CPUs; the server shares them with the controller)")
    reports = REPO / "reports"
    reports.mkdir(exist_ok=True)
    out = reports / f"bench-fleet-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
