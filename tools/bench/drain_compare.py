#!/usr/bin/env python3
"""The drain's own cost, this checkout's transition_drain and transition_fold_sync_log against a
git revision's, interleaved call by call on copies of one queue (docs/benchmarks.md).

On a throwaway cluster: seed --scale clients, migrate to phase 6 (quiet; drain_method none, so
nothing drains), then today's application's mix unthrottled for --fill seconds with no drainer:
the queue and the sync's log it leaves are the work. Each round copies that database twice,
loads --ref's two functions (from `git show REF:migrations/ht036/phase3/deploy/007_transition_sync.sql`)
into one copy and this checkout's into the other, then on each: the log folded alone
(transition_fold_sync_log(NULL)), and the queue drained by transition_drain(--batch) calls,
alternating between the two copies call by call, so that a shared machine's load falls on both
alike. Prints entries per second of busy time for each, and checks that both copies end with
the same overrides, events and rollback records (the same guarantees, the same result).

    python tools/bench/drain_compare.py --ref HEAD~1 [--scale 20000] [--fill 15] [--rounds 3]

Standard library and psycopg2 only (with tools/pgcluster.py), plus the project's ansible-playbook.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import pgcluster  # noqa: E402 - tools/ is not a package
from openloop import APP_MIX  # noqa: E402
from queue_cost import LOADED, SYNC_SQL, connect, pgbench  # noqa: E402
from sync_cost import playbook, psql  # noqa: E402

REPO = HERE.parents[1]
FUNCTIONS = ("transition_fold_sync_log(", "transition_drain(")
# What the drain decides, compared between the two copies at the end.
OUTCOME = {
    "overrides": "SELECT id, marketplace_module_id, installation_id, activation_status FROM client_app_overrides",
    "records": """SELECT override_id, old_module_id, old_installation_id, old_status, module_id, installation_id,
                         new_status, candidates, chosen_by, writes FROM migration_ledger.phase3_override_sync""",
    "events": "SELECT event_type, event_payload, correlation_id FROM integration_events",
    "inserted": "SELECT count(*) FROM migration_ledger.phase3_inserted",
    "queue": "SELECT count(*) FROM migration_ledger.transition_queue",
}


def functions_of(sql: str) -> str:
    """The CREATE OR REPLACE FUNCTION statements of the fold and the drain in a 007 text."""
    parts = ["SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', false);"]
    for name in FUNCTIONS:
        start = sql.index("CREATE OR REPLACE FUNCTION migration_ledger." + name)
        parts.append(sql[start:sql.index("$$;", sql.index("AS $$", start)) + 3])
    return "\n".join(parts)


def outcome(conn: Any) -> dict[str, str]:
    out = {}
    with conn.cursor() as cur:
        for key, sql in OUTCOME.items():
            cur.execute(f"SELECT md5(string_agg(x::text, ',' ORDER BY x::text)), count(*) FROM ({sql}) AS x")
            out[key] = "{}:{}".format(*cur.fetchone())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="the git revision to compare with (its 007's two functions)")
    ap.add_argument("--scale", type=int, default=20000)
    ap.add_argument("--fill", type=int, default=15, help="seconds of the mix, no drainer, that fill the queue")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args(argv)
    ref_sql = subprocess.run(["git", "show", f"{args.ref}:{SYNC_SQL.relative_to(REPO)}"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
    variants = {"ref": functions_of(ref_sql), "now": functions_of(SYNC_SQL.read_text())}
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-drain-compare-"))
    work.chmod(0o711)  # the postgres OS user runs the server when we are root
    datadir = work / "data"
    try:
        info = pgcluster.start_cluster(datadir)
        print(f"seeding {args.scale} clients, migrating to phase 6 (quiet, nothing draining), then "
              f"{args.fill} s of the mix ...", flush=True)
        pgcluster.seed_database(info, "open_tr", args.scale)
        playbook(info, "open_tr", "migrate.yml", work, phase="all", drain_method="none", **LOADED)
        psql(info, "open_tr", "VACUUM ANALYZE")
        pgbench(info, "open_tr", [(f, w) for _, f, w in APP_MIX], args.clients, args.scale, args.fill)
        psql(info, "open_tr", "CHECKPOINT")
        depth, logged = (int(x) for x in psql(info, "open_tr", """
            SELECT (SELECT count(*) FROM migration_ledger.transition_queue) || ' '
                   || (SELECT count(*) FROM migration_ledger.phase3_override_sync_log)""").split())
        print(f"the work: {depth} queued entries, {logged} rows of the sync's log", flush=True)
        rates: dict[str, list[float]] = {"ref": [], "now": []}
        folds: dict[str, list[float]] = {"ref": [], "now": []}
        for n in range(args.rounds):
            order = ("ref", "now") if n % 2 == 0 else ("now", "ref")
            conns = {}
            for v in order:
                psql(info, "postgres", f"DROP DATABASE IF EXISTS copy_{v}")
                psql(info, "postgres", f"CREATE DATABASE copy_{v} TEMPLATE open_tr")
                conns[v] = connect(info, f"copy_{v}")
                with conns[v].cursor() as cur:
                    cur.execute(variants[v])
            busy = dict.fromkeys(order, 0.0)
            applied = dict.fromkeys(order, 0)
            for v in order:
                with conns[v].cursor() as cur:
                    t0 = time.monotonic()
                    cur.execute("SELECT migration_ledger.transition_fold_sync_log(NULL, true)")
                    folds[v].append(cur.fetchone()[0] / max(time.monotonic() - t0, 1e-6))
            live, i = set(order), 0
            while live:
                for v in order if i % 2 == 0 else order[::-1]:
                    if v in live:
                        with conns[v].cursor() as cur:
                            t0 = time.monotonic()
                            cur.execute("SELECT migration_ledger.transition_drain(%s)", (args.batch,))
                            got = cur.fetchone()[0]
                            busy[v] += time.monotonic() - t0
                        applied[v] += got
                        if got == 0:
                            live.discard(v)
                i += 1
            ends = {v: outcome(conns[v]) for v in order}
            for conn in conns.values():
                conn.close()
            for v in order:
                rates[v].append(applied[v] / max(busy[v], 1e-6))
            same = ends["ref"] == ends["now"]
            print(f"round {n + 1}: the log folded alone at ref {folds['ref'][-1]:,.0f} / now {folds['now'][-1]:,.0f} "
                  f"rows/s; drained at ref {rates['ref'][-1]:,.0f} / now {rates['now'][-1]:,.0f} entries/s; "
                  f"same outcome: {same}", flush=True)
            if not same:
                print(f"  ref {ends['ref']}\n  now {ends['now']}", flush=True)
                return 1
        print(f"\n{args.ref} against this checkout, {args.rounds} rounds, {depth} entries and {logged} log rows each, "
              f"transition_drain({args.batch}) interleaved call by call:")
        print(f"  fold of the log alone: {statistics.median(folds['ref']):,.0f} -> "
              f"{statistics.median(folds['now']):,.0f} rows/s (median; "
              f"{statistics.median(folds['now']) / statistics.median(folds['ref']):.2f}x)")
        print(f"  drain: {statistics.median(rates['ref']):,.0f} -> {statistics.median(rates['now']):,.0f} entries/s "
              f"of busy time (median; {statistics.median(rates['now']) / statistics.median(rates['ref']):.2f}x; "
              f"per round {', '.join(f'{b / a:.2f}' for a, b in zip(rates['ref'], rates['now'], strict=True))})")
        return 0
    finally:
        pgcluster.destroy_cluster(datadir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
