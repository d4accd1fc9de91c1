#!/usr/bin/env python3
"""What the transition's sync costs today's application (issue 12, docs/transition.md).

On a throwaway cluster: seed --scale clients, migrate (migrate.yml -e phase=all, quiet), clone
the migrated database twice, end the transition on one of them (complete.yml removes the sync),
then run the same open-loop write mix of today's application (tools/bench/pgbench/old_app_flip,
_install and _new_override, pgbench --rate, -l) against each in turn, alternating A B A B
(--rounds), and print the latency from each transaction's scheduled start (p50, p99) with the
sync and without it, per script and overall, and the difference.

    python tools/bench/sync_cost.py [--scale 100000] [--rate 200] [--seconds 30] [--rounds 2]

Standard library only (with tools/pgcluster.py), plus the project's ansible-playbook.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import pgcluster  # noqa: E402 - tools/ is not a package

PGBENCH = REPO / "tools" / "bench" / "pgbench"
# Today's application's writes (reads do not fire the sync), in the done-when run's proportions.
WRITE_MIX = (("old_app_flip.sql", 30), ("old_app_install.sql", 15), ("old_app_new_override.sql", 15))


def psql(info: dict[str, Any], dbname: str, sql: str) -> str:
    env = {**os.environ, "PGPASSWORD": info["password"]}
    return subprocess.run(
        [pgcluster.find_pg_bin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", info["host"],
         "-p", str(info["port"]), "-U", info["user"], "-d", dbname, "-c", sql],
        env=env, check=True, capture_output=True, text=True).stdout.strip()


def playbook(info: dict[str, Any], dbname: str, name: str, work: Path, **extra: Any) -> None:
    host = {"migration_db_host": info["host"], "migration_db_port": int(info["port"]),
            "migration_db_name": dbname, "migration_db_user": info["user"],
            "migration_db_password": info["password"], "migration_env": "local",
            "migration_report_dir": str(work / "reports"), "migration_backup_dir": str(work / "backups"),
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = work / f"{dbname}.json"
    inventory.write_text(json.dumps({"all": {"children": {"databases": {"hosts": {dbname: host}}}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
           str(REPO / "playbooks" / name), "-e", json.dumps(extra)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed on {dbname}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")


def write_mix(info: dict[str, Any], dbname: str, scale: int, rate: int, seconds: int, work: Path,
              tag: str) -> list[tuple[int, float]]:
    """pgbench, open loop; returns (script number, latency from the scheduled start in ms)."""
    prefix = work / f"log_{tag}"
    cmd = [pgcluster.find_pg_bin("pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(seconds),
           "--rate", str(rate), "-D", f"scale={scale}", "-l", "--log-prefix", str(prefix),
           "-h", info["host"], "-p", str(info["port"]), "-U", info["user"]]
    for script, weight in WRITE_MIX:
        cmd += ["-f", f"{PGBENCH / script}@{weight}"]
    cmd.append(dbname)
    subprocess.run(cmd, env={**os.environ, "PGPASSWORD": info["password"]}, check=True,
                   capture_output=True, text=True, cwd=work)
    out = []
    for log in work.glob(prefix.name + ".*"):
        for line in log.read_text().splitlines():
            # client transaction time script epoch us schedule_lag; under --rate, time runs
            # from the scheduled start (the lag is part of it)
            f = line.split()
            if len(f) >= 7 and f[2].isdigit():
                out.append((int(f[3]), int(f[2]) / 1000.0))
        log.unlink()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=100000)
    ap.add_argument("--rate", type=int, default=200, help="transactions per second (open loop)")
    ap.add_argument("--seconds", type=int, default=30, help="per round and variant")
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds, alternating")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-sync-cost-"))
    work.chmod(0o711)  # the postgres OS user runs the server when we are root
    datadir = work / "data"
    try:
        info = pgcluster.start_cluster(datadir)
        print(f"seeding {args.scale} clients, migrating (quiet) ...", flush=True)
        pgcluster.seed_database(info, "seeded", args.scale)
        playbook(info, "seeded", "migrate.yml", work, phase="all")
        for name in ("with_sync", "without_sync"):
            psql(info, "postgres", f"CREATE DATABASE {name} TEMPLATE seeded")
        playbook(info, "without_sync", "complete.yml", work)
        assert psql(info, "with_sync", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgmigrate%'") == "3"
        assert psql(info, "without_sync", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgmigrate%'") == "0"
        samples: dict[str, list[tuple[int, float]]] = {"with_sync": [], "without_sync": []}
        for n in range(args.rounds):
            for name in (("with_sync", "without_sync") if n % 2 == 0 else ("without_sync", "with_sync")):
                print(f"round {n + 1}: {name}, {args.seconds} s at {args.rate}/s ...", flush=True)
                samples[name] += write_mix(info, name, args.scale, args.rate, args.seconds, work, f"{name}{n}")
        print(f"\nToday's application's writes, open loop at {args.rate}/s, latency from the scheduled start "
              f"(ms), {args.scale} clients, {args.rounds} x {args.seconds} s per variant:")
        print(f"{'script':26} {'with sync p50':>14} {'p99':>8}   {'without p50':>12} {'p99':>8}   "
              f"{'diff p50':>9} {'p99':>8}")
        rows = [(script, i) for i, (script, _) in enumerate(WRITE_MIX)] + [("all writes", None)]
        for label, index in rows:
            a = [ms for s, ms in samples["with_sync"] if index is None or s == index]
            b = [ms for s, ms in samples["without_sync"] if index is None or s == index]
            pa, pb = (pct(a, 0.5), pct(a, 0.99)), (pct(b, 0.5), pct(b, 0.99))
            print(f"{label:26} {pa[0]:14.2f} {pa[1]:8.2f}   {pb[0]:12.2f} {pb[1]:8.2f}   "
                  f"{pa[0] - pb[0]:+9.2f} {pa[1] - pb[1]:+8.2f}")
        print(f"(transactions: {len(samples['with_sync'])} with the sync, {len(samples['without_sync'])} without)")
        return 0
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
