#!/usr/bin/env python3
"""How long a full rollback holds the application's tables over a long link (docs/design.md,
"Lock safety").

On a throwaway cluster: seed --scale clients, migrate (migrate.yml -e phase=all), then for each
one-way delay of --delays, on a fresh copy of the migrated database: rollback.yml -e phase=all
through tools/wire_proxy.py adding that delay each way (a managed database seen from the
controller), while today's application reads client_app_overrides every 2 ms on a direct
connection. Prints, per delay: the queries the rollback's transaction sent from its first revert
file to COMMIT (the round trips it holds its locks for), the application's longest read, the
rollback's wall time. JSON under reports/.

    python tools/bench/link.py [--scale 2000] [--delays 0,10,25]

Standard library only (with tools/pgcluster.py and tools/wire_proxy.py), plus the project's
ansible-playbook.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tools" / "bench"))
import pgcluster  # noqa: E402 - tools/ is not a package
import psycopg2  # noqa: E402
from sync_cost import playbook, psql  # noqa: E402
from wire_proxy import WireProxy  # noqa: E402

# The first line of a revert file the full rollback's transaction runs, and its last (phase 2).
FIRST_REVERT = "-- Rollback of phase 5"


def reader(info: dict[str, Any], dbname: str, stop: threading.Event, longest: list[float]) -> None:
    """Today's application's read, every 2 ms; the longest, in ms."""
    conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                            password=info["password"], dbname=dbname, application_name="app")
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.is_set():
            started = time.monotonic()
            cur.execute("SELECT id, enabled FROM client_app_overrides LIMIT 1")
            cur.fetchall()
            longest[0] = max(longest[0], 1000 * (time.monotonic() - started))
            time.sleep(0.002)
    conn.close()


def locked_round_trips(connections: dict[int, list[str]]) -> int:
    """Queries of the rollback's connection from the one carrying its first revert file to the
    one ending in COMMIT, both counted."""
    texts = next(t for t in connections.values() if any(FIRST_REVERT in q for q in t))
    first = next(i for i, q in enumerate(texts) if FIRST_REVERT in q)
    last = next(i for i in range(first, len(texts)) if texts[i].rstrip().upper().endswith("COMMIT"))
    return last - first + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=2000, help="clients to seed (default 2000)")
    parser.add_argument("--delays", default="0,10,25", help="one-way delays in ms, comma-separated")
    args = parser.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-link-"))
    work.chmod(0o711)  # the postgres OS user runs the server when we are root
    info = pgcluster.start_cluster(work / "data")
    rows = []
    try:
        pgcluster.seed_database(info, "migrated", args.scale)
        print(f"bench-link: {args.scale} clients seeded; migrating ...", flush=True)
        playbook(info, "migrated", "migrate.yml", work, phase="all")
        for delay in delays:
            name = f"rollback_{int(delay)}"
            psql(info, "postgres", f"CREATE DATABASE {name} TEMPLATE migrated")
            stop, longest = threading.Event(), [0.0]
            app = threading.Thread(target=reader, args=(info, name, stop, longest), daemon=True)
            app.start()
            with WireProxy(info["host"], info["port"], delay_ms=delay) as proxy:
                started = time.monotonic()
                playbook({**info, "host": "127.0.0.1", "port": proxy.port}, name, "rollback.yml", work, phase="all")
                wall = time.monotonic() - started
                connections = proxy.by_connection()
            stop.set()
            app.join()
            rows.append({"delay_ms": delay, "round_trip_ms": 2 * delay,
                         "locked_queries": locked_round_trips(connections),
                         "app_longest_ms": round(longest[0], 1), "rollback_wall_s": round(wall, 1)})
            print(f"bench-link: {delay:g} ms each way done", flush=True)
    finally:
        pgcluster.destroy_cluster(work / "data")
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfull rollback (-e phase=all) of {args.scale} clients through a proxy adding a delay each way;"
          " today's application reads client_app_overrides every 2 ms meanwhile\n")
    print(f"{'one-way ms':>10} {'round trip ms':>14} {'queries, first revert file to COMMIT':>38}"
          f" {'longest app read ms':>20} {'rollback wall s':>16}")
    for r in rows:
        print(f"{r['delay_ms']:>10g} {r['round_trip_ms']:>14g} {r['locked_queries']:>38} "
              f"{r['app_longest_ms']:>20} {r['rollback_wall_s']:>16}")
    out = REPO / "reports" / f"bench-link-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"scale": args.scale, "runs": rows}, indent=2))
    print(f"\nbench-link: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
