#!/usr/bin/env python3
"""What the transition costs today's application's capacity, with the queue (docs/transition.md).

On a throwaway cluster: seed --scale clients, migrate phases 1 and 2 (quiet) into `before` (the
database as it is before phase 3), clone it into `open` and migrate that one to phase 6 (the
transition open: the sync in every write). Then, alternating before / open (--rounds, each
--seconds long), the old application's mix unthrottled (pgbench -M prepared, the bench's mix:
read 40, flip 30, install 20, new override 10; tools/bench/openloop.py) measures capacity. On
`open` a drainer session runs beside it (transition_drain(500) in one-statement transactions,
pausing 0.1 s when the queue is empty), so the deferred work is paid in the same round; what
it left is drained after the round and timed too. A third side, `open` with no drainer during
the round, shows what the writes pay themselves; its queue is drained alone after the round.

--records also compares, on `open` and alternating, the flips alone (old_app_flip.sql) with
each flip's rollback record written as an upsert into phase3_override_sync (the earlier sync),
as an append to the unindexed phase3_override_sync_log (the current one), and not at all (not a
correct sync: the bound of what a record can cost).

    python tools/bench/queue_cost.py [--scale 20000] [--seconds 10] [--rounds 3] [--clients 8] [--records]

Standard library and psycopg2 only (with tools/pgcluster.py), plus the project's ansible-playbook.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import pgcluster  # noqa: E402 - tools/ is not a package
from openloop import APP_MIX, SCRIPTS  # noqa: E402
from sync_cost import playbook, psql  # noqa: E402

# A shared machine's load is not the migration's: the quiet copies are migrated whatever it is.
LOADED = {"migration_abort_degradation_pct": 1000, "migration_abort_min_delta_ms": 1000}
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
SYNC_SQL = HERE.parents[1] / "migrations/ht036/phase3/deploy/007_transition_sync.sql"


def pgbench(info: dict[str, Any], dbname: str, scripts: list[tuple[str, int]], clients: int, scale: int,
            seconds: int) -> float:
    cmd = [pgcluster.find_pg_bin("pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", "2",
           "-T", str(seconds), "-D", f"scale={scale}", "-h", info["host"], "-p", str(info["port"]),
           "-U", info["user"]]
    for name, weight in scripts:
        cmd += ["-f", f"{SCRIPTS / name}@{weight}"]
    cmd.append(dbname)
    out = subprocess.run(cmd, env={**os.environ, "PGPASSWORD": info["password"]}, capture_output=True,
                         text=True, check=True).stdout
    return float(TPS.search(out).group(1))


def connect(info: dict[str, Any], dbname: str) -> Any:
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"], password=info["password"],
                            dbname=dbname, application_name="pgmigrate-bench-drain")
    conn.autocommit = True
    return conn


class Drainer(threading.Thread):
    """transition_drain(500) in one-statement transactions until stopped; counts what it applied."""

    def __init__(self, info: dict[str, Any], dbname: str) -> None:
        super().__init__(daemon=True)
        self.conn = connect(info, dbname)
        self.stop = threading.Event()
        self.applied = 0
        self.calls = 0
        self.busy_s = 0.0
        self.max_depth = 0

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                t0 = time.monotonic()
                cur.execute("SELECT migration_ledger.transition_drain(500)")
                n = cur.fetchone()[0]
                self.busy_s += time.monotonic() - t0
                self.applied += n
                self.calls += 1
                if n < 500:
                    cur.execute("SELECT depth FROM migration_ledger.transition_queue_state()")
                    self.max_depth = max(self.max_depth, cur.fetchone()[0])
                    time.sleep(0.1)


def drain_rest(info: dict[str, Any], dbname: str) -> tuple[int, float]:
    conn = connect(info, dbname)
    t0 = time.monotonic()
    total = 0
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT migration_ledger.transition_drain(5000)")
            n = cur.fetchone()[0]
            total += n
            if n == 0:
                break
        cur.execute("SELECT migration_ledger.transition_fold_sync_log(NULL, true)")
    conn.close()
    return total, time.monotonic() - t0


def upsert_variant() -> str:
    """transition_sync_override as in 007, but each flip's record an upsert into
    phase3_override_sync (the sync before the log)."""
    text = SYNC_SQL.read_text()
    start = text.index("CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_override()")
    end = text.index("$$;", text.index("AS $$", start)) + 3
    body = text[start:end]
    flip = re.search(r"INSERT INTO migration_ledger\.phase3_override_sync_log\n.*?'kept_linkage'\);", body, re.S)
    body = body.replace(flip.group(0), """INSERT INTO migration_ledger.phase3_override_sync AS s
               (override_id, old_module_id, old_installation_id, old_status,
                module_id, installation_id, new_status, candidates, chosen_by)
        VALUES (NEW.id, NEW.marketplace_module_id, NEW.installation_id, NEW.activation_status,
                NEW.marketplace_module_id, NEW.installation_id, st, NULL, 'kept_linkage')
        ON CONFLICT (override_id) DO UPDATE
           SET new_status = excluded.new_status, writes = s.writes + 1, synced_at = clock_timestamp();""")
    return body


def no_record_variant() -> str:
    """transition_sync_override without the flip's record (not a correct sync: the bound of
    what the record can cost)."""
    body = current_variant()
    flip = re.search(r"INSERT INTO migration_ledger\.phase3_override_sync_log\n.*?'kept_linkage'\);", body, re.S)
    return body.replace(flip.group(0), "NULL;")


def current_variant() -> str:
    text = SYNC_SQL.read_text()
    start = text.index("CREATE OR REPLACE FUNCTION migration_ledger.transition_sync_override()")
    return text[start:text.index("$$;", text.index("AS $$", start)) + 3]


def spread(values: list[float]) -> str:
    return (f"{min(values):,.0f}-{max(values):,.0f}, median {statistics.median(values):,.0f}"
            if values else "-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--records", action="store_true", help="also compare the flip's record: upsert and log")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-queue-cost-"))
    work.chmod(0o711)  # the postgres OS user runs the server when we are root
    datadir = work / "data"
    mix = [(f, w) for _, f, w in APP_MIX]
    try:
        info = pgcluster.start_cluster(datadir)
        print(f"seeding {args.scale} clients, phases 1 and 2, then a copy to phase 6 (quiet) ...", flush=True)
        pgcluster.seed_database(info, "seeded", args.scale)
        playbook(info, "seeded", "migrate.yml", work, phase="1", **LOADED)
        playbook(info, "seeded", "migrate.yml", work, phase="2", **LOADED)
        psql(info, "postgres", "CREATE DATABASE before_p3 TEMPLATE seeded")
        psql(info, "postgres", "CREATE DATABASE open_tr TEMPLATE seeded")
        # drain_method none: no worker of migrate.yml's drains beside the rounds (it did, in the
        # rounds measured "without a drainer"), and none is left behind with its cron entry.
        playbook(info, "open_tr", "migrate.yml", work, phase="all", drain_method="none", **LOADED)
        for db in ("before_p3", "open_tr"):
            psql(info, db, "VACUUM ANALYZE")
        # warm-up, not counted
        for db in ("before_p3", "open_tr"):
            pgbench(info, db, mix, args.clients, args.scale, 3)
        drain_rest(info, "open_tr")
        tps: dict[str, list[float]] = {"before": [], "open": [], "deferred": []}
        after: list[tuple[int, float]] = []
        drained: list[dict[str, Any]] = []
        deferred: list[tuple[int, float]] = []
        for n in range(args.rounds):
            for side in (("before", "open", "deferred") if n % 2 == 0 else ("deferred", "open", "before")):
                db = "before_p3" if side == "before" else "open_tr"
                if side == "deferred":
                    # No drainer during the round: what the writes pay themselves; the queue
                    # is drained after it, alone, and timed.
                    value = pgbench(info, db, mix, args.clients, args.scale, args.seconds)
                    deferred.append(drain_rest(info, db))
                    tps[side].append(value)
                    print(f"round {n + 1}: open, no drainer {value:,.0f} transactions/s; then {deferred[-1][0]} "
                          f"entries drained alone in {deferred[-1][1]:.2f} s", flush=True)
                    continue
                drainer = Drainer(info, db) if side == "open" else None
                if drainer:
                    drainer.start()
                value = pgbench(info, db, mix, args.clients, args.scale, args.seconds)
                if drainer:
                    drainer.stop.set()
                    drainer.join(30)
                    drained.append({"applied": drainer.applied, "calls": drainer.calls,
                                    "busy_s": round(drainer.busy_s, 2), "max_depth": drainer.max_depth})
                    after.append(drain_rest(info, db))
                tps[side].append(value)
                print(f"round {n + 1}: {side:6} {value:,.0f} transactions/s"
                      + (f"; drainer {drained[-1]}, left after the round {after[-1][0]} "
                         f"(drained in {after[-1][1]:.2f} s)" if drainer else ""), flush=True)
        ratio = statistics.median(tps["open"]) / statistics.median(tps["before"])
        print(f"\nThe old application's mix, unthrottled, {args.clients} connections, -M prepared, "
              f"{args.scale} clients, {args.rounds} alternated rounds of {args.seconds} s:")
        print(f"  before phase 3:            {spread(tps['before'])} transactions/s")
        print(f"  transition open (drained): {spread(tps['open'])} transactions/s")
        print(f"  ratio of the medians: {ratio:.2f}x; per-round ratios "
              f"{', '.join(f'{o / b:.2f}' for o, b in zip(tps['open'], tps['before'], strict=True))}")
        print(f"  transition open, no drainer during the round: {spread(tps['deferred'])} transactions/s "
              f"({statistics.median(tps['deferred']) / statistics.median(tps['before']):.2f}x); the queue it left "
              f"drained alone at {statistics.median(n / max(t, 1e-3) for n, t in deferred):,.0f} entries/s")
        if args.records:
            flips: dict[str, list[float]] = {"upsert": [], "log": [], "none": []}
            variants = {"upsert": upsert_variant(), "log": current_variant(), "none": no_record_variant()}
            conn = connect(info, "open_tr")
            for n in range(args.rounds):
                for variant in (("upsert", "log", "none") if n % 2 == 0 else ("none", "log", "upsert")):
                    with conn.cursor() as cur:
                        cur.execute(variants[variant])
                    value = pgbench(info, "open_tr", [("old_app_flip.sql", 1)], args.clients, args.scale,
                                    args.seconds)
                    flips[variant].append(value)
                    print(f"round {n + 1}: flips, record as {variant:6} {value:,.0f}/s", flush=True)
            with conn.cursor() as cur:
                cur.execute(current_variant())
            conn.close()
            print(f"\nFlips alone, {args.clients} connections: record as an upsert {spread(flips['upsert'])}/s; "
                  f"appended to the log {spread(flips['log'])}/s; no record (bound) {spread(flips['none'])}/s")
        return 0
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
