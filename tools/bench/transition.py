#!/usr/bin/env python3
"""The transition at benchmark size: today's application (pgbench, the old_app_*
scripts, open loop) runs from before phase 1 until the end, while

    migrate.yml -e phase=all, check; rollback.yml -e phase=data, check;
    migrate.yml -e phase=3, check; complete.yml, no trigger or function of the sync left

run on a throwaway cluster seeded with --scale clients. The check is tools/check_transition.sql
(written apart from the migration's rule). Prints each step's wall time and result, the
traffic's transactions and failures, and exits 1 on any failure.

    .venv/bin/python tools/bench/transition.py --scale 100000 --rate 200
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools")]

from helpers import connect, pgcluster, playbook_output, run_playbook  # noqa: E402
from transition_helpers import sync_leftovers  # noqa: E402

SCRIPTS = ROOT / "tools" / "bench" / "pgbench"
MIX = [("old_app_read.sql", 40), ("old_app_flip.sql", 30), ("old_app_install.sql", 15),
       ("old_app_new_override.sql", 15)]


def check(db: dict) -> list[tuple]:
    """check_transition.sql's rows (check, failures, examples)."""
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute((ROOT / "tools" / "check_transition.sql").read_text())
            return cur.fetchall()
    finally:
        conn.close()


def rolled_back(db: dict) -> list[tuple]:
    """After a data rollback: overrides still linked or not pending, events left (want none)."""
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT 'overrides still linked or not pending', count(*) FROM client_app_overrides
                            WHERE marketplace_module_id IS NOT NULL OR installation_id IS NOT NULL
                               OR activation_status IS DISTINCT FROM 'pending'
                           UNION ALL
                           SELECT 'module_installed events left', count(*) FROM integration_events
                            WHERE event_type = 'module_installed'""")
            return cur.fetchall()
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=100000)
    ap.add_argument("--rate", type=float, default=200.0, help="transactions/s of the old application")
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-transition-"))
    base.chmod(0o755)
    info = pgcluster.start_cluster(base / "data", password="bench")
    ok = True
    try:
        t = time.monotonic()
        pgcluster.seed_database(info, "agency", args.scale)
        db = {**info, "dbname": "agency"}
        print(f"seeded {args.scale} clients in {time.monotonic() - t:.1f} s", flush=True)
        pgbench = shutil.which("pgbench") or pgcluster.find_pg_bin("pgbench")
        cmd = [pgbench, "-n", "-c", str(args.clients), "-j", str(args.clients), "-T", "86400",
               "--rate", str(args.rate), "-D", f"scale={args.scale}", "-h", db["host"], "-p", str(db["port"]),
               "-U", db["user"], "-l", "--log-prefix", str(base / "app")]
        cmd += [a for name, weight in MIX for a in ("-f", f"{SCRIPTS / name}@{weight}")]
        traffic = subprocess.Popen([*cmd, "agency"], env={"PGPASSWORD": db["password"], "PATH": "/usr/bin:/bin"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)
        dirs = {"migration_backup_dir": str(base / "backups"), "migration_report_dir": str(base / "reports")}
        steps = [("migrate.yml -e phase=all", "playbooks/migrate.yml", {"phase": "all"}, "check"),
                 ("rollback.yml -e phase=data", "playbooks/rollback.yml", {"phase": "data"}, "rolled_back"),
                 ("migrate.yml -e phase=3", "playbooks/migrate.yml", {"phase": "3"}, "check"),
                 ("complete.yml", "playbooks/complete.yml", {}, "leftovers")]
        for label, playbook, extra, verify in steps:
            t = time.monotonic()
            result = run_playbook(playbook, db, {**extra, **dirs})
            took = time.monotonic() - t
            if result.returncode != 0:
                print(f"{label}: FAILED after {took:.1f} s\n{playbook_output(result)[-4000:]}", flush=True)
                ok = False
                break
            line = f"{label}: passed in {took:.1f} s"
            if verify == "check":
                bad = [(c, n, ex) for c, n, ex in check(db) if n]
                ok = ok and not bad
                line += "; check_transition: " + ("every check 0 failures" if not bad else f"FAILED {bad}")
            elif verify == "rolled_back":
                left = rolled_back(db)
                ok = ok and not any(n for _, n in left)
                line += "; " + ", ".join(f"{what}: {n}" for what, n in left)
            else:
                left = sync_leftovers(db)
                ok = ok and not left
                line += "; sync left behind: " + (", ".join(left) if left else "nothing")
            print(line, flush=True)
        traffic.terminate()
        out, _ = traffic.communicate(timeout=30)
        # Per-transaction log: ... time_us(latency from the scheduled start, with --rate) ...
        lat = [int(f[2]) for log in base.glob("app.*") for f in map(str.split, log.read_text().splitlines())
           if len(f) >= 6 and f[2].isdigit()]
        errors = [ln for ln in out.splitlines() if "error" in ln.lower() or "abort" in ln.lower()]
        lat.sort()
        p99 = lat[int(len(lat) * 0.99)] / 1000 if lat else 0.0
        print(f"old application (pgbench --rate {args.rate:g}): {len(lat)} transactions logged, "
              f"{len(errors)} error line(s){': ' + errors[0] if errors else ''}; "
              f"p99 {p99:.1f} ms, worst {lat[-1] / 1000 if lat else 0:.1f} ms", flush=True)
        ok = ok and not errors
    finally:
        pgcluster.destroy_cluster(base / "data")
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
