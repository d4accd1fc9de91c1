#!/usr/bin/env python3
"""make bench-scale: how the migration's cost grows with the data, without traffic.

For each size (--sizes, clients; migrations/ht036/baseline/generate.sql makes about 10 overrides a
client), on one throwaway cluster: seed, VACUUM ANALYZE and CHECKPOINT, then
`ansible-playbook playbooks/migrate.yml -e phase=all`, measuring

  wall time per phase (the ledger's records) and per million overrides;
  the plan table's size (migration_ledger.phase3_override_plan, indexes included);
  WAL written (pg_current_wal_lsn before and after);
  the controller's largest memory: ansible-playbook and every process it starts (/proc polled
    every --poll-s: the largest sum of their RSS, and the largest single process, which
    getrusage(RUSAGE_CHILDREN) confirms once they have ended);
  the database sessions' largest memory: the private (anonymous) RSS of the database's backends
    (shared buffers left out: every backend maps them), polled alike;

and, between consecutive sizes, each figure's growth exponent (log of its ratio over log of the
overrides' ratio: 1 is linear); one over 1.15 is flagged as growing faster than the data.
Prints the table, writes reports/bench-scale-<time>.json and .png.

    tools/bench/scale.py [--sizes 100000,300000,1000000] [--keep-going]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(HERE))

import pgcluster  # noqa: E402
from bench import ProcedureFailed, add_server_arguments, bench_settings, drop, execute, run_playbook  # noqa: E402

PHASES = ["1", "2", "3", "4", "5", "6"]
FASTER = 1.15
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_tree() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
    return parents


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


class MemoryPoller(threading.Thread):
    """The controller's process tree (descendants of this process, the database server's
    processes left out) and the database's backends, every poll_s."""

    def __init__(self, db: dict[str, Any], poll_s: float) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.poll_s = poll_s
        self.stop = threading.Event()
        self.controller_sum_kib = 0
        self.controller_max_kib = 0
        self.controller_max_name = ""
        self.backend_max_kib = 0
        self.backends_sum_kib = 0
        self.samples = 0

    def backends(self) -> list[int]:
        try:
            rows = execute(self.db, self.db["dbname"],
                           "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                           "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
            return [int(r[0]) for r in rows]
        except Exception:  # noqa: BLE001 - the database may be busy dropping or restarting
            return []

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            tree = [p for p in descendants(me, proc_tree()) if comm(p) not in ("postgres", "postmaster")]
            rss = {p: status_kib(p, "VmRSS") for p in tree}
            if rss:
                total = sum(rss.values())
                self.controller_sum_kib = max(self.controller_sum_kib, total)
                top = max(rss, key=rss.get)
                if rss[top] > self.controller_max_kib:
                    self.controller_max_kib, self.controller_max_name = rss[top], comm(top)
            anon = [status_kib(p, "RssAnon") for p in self.backends()]
            if anon:
                self.backend_max_kib = max(self.backend_max_kib, max(anon))
                self.backends_sum_kib = max(self.backends_sum_kib, sum(anon))
            self.samples += 1
            self.stop.wait(self.poll_s)


def lsn(db: dict[str, Any]) -> str:
    return execute(db, db["dbname"], "SELECT pg_current_wal_lsn()::text")[0][0]


def measure_size(info: dict[str, Any], clients: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    name = f"scale_{clients}"
    drop(info, name)
    print(f"bench-scale: seeding {clients} clients ...", flush=True)
    started = time.monotonic()
    pgcluster.seed_database(info, name, clients)
    db = {**info, "dbname": name}
    execute(db, name, "VACUUM ANALYZE")
    execute(db, name, "CHECKPOINT")
    seeded = time.monotonic() - started
    overrides = int(execute(db, name, "SELECT count(*) FROM client_app_overrides")[0][0])
    data_bytes = int(execute(db, name, "SELECT pg_database_size(current_database())")[0][0])
    print(f"bench-scale: {clients} clients, {overrides} overrides, {data_bytes / 2**20:.0f} MiB "
          f"(seeded in {seeded:.0f} s); migrating ...", flush=True)
    before = lsn(db)
    poller = MemoryPoller(db, args.poll_s)
    poller.start()
    t0 = time.time()
    error = None
    try:
        result = run_playbook(db, workdir, Path(args.repo), {})
    except ProcedureFailed as exc:
        result, error = {"spans": exc.spans, "steps": exc.steps}, str(exc)
    wall = time.time() - t0
    poller.stop.set()
    poller.join(timeout=30)
    wal = int(execute(db, name, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{before}')")[0][0])
    plan = execute(db, name, "SELECT coalesce(pg_total_relation_size(to_regclass("
                             "'migration_ledger.phase3_override_plan')), 0)")[0][0]
    spans = result["spans"]
    phases = {p: round(b - a, 2) for p, (a, b) in spans.items()}
    row = {
        "clients": clients, "overrides": overrides, "database_bytes_before": data_bytes,
        "wall_s": round(wall, 2), "phase_wall_s": phases,
        "s_per_million_overrides": {p: round(w / (overrides / 1e6), 2) for p, w in phases.items()},
        "wall_s_per_million_overrides": round(wall / (overrides / 1e6), 2),
        "plan_table_bytes": int(plan), "wal_bytes": wal,
        "controller_peak_rss_sum_bytes": poller.controller_sum_kib * 1024,
        "controller_peak_rss_process_bytes": poller.controller_max_kib * 1024,
        "controller_peak_rss_process": poller.controller_max_name,
        "backend_peak_private_rss_bytes": poller.backend_max_kib * 1024,
        "backends_peak_private_rss_sum_bytes": poller.backends_sum_kib * 1024,
        "memory_samples": poller.samples, "steps": {k: v for k, v in result["steps"].items() if k != "ansible"},
        "ansible_tasks": (result["steps"].get("ansible") or {}).get("tasks"), "error": error,
    }
    if not args.keep:
        drop(info, name)
    print(f"bench-scale: {clients} clients: {wall:.1f} s" + (f" FAILED: {error[:300]}" if error else ""), flush=True)
    return row


GROWTH = {
    "wall_s": "wall time", "plan_table_bytes": "plan table", "wal_bytes": "WAL written",
    "controller_peak_rss_sum_bytes": "controller memory",
    "backend_peak_private_rss_bytes": "largest session memory",
    **{f"phase_{p}": f"phase {p} wall" for p in PHASES},
}


def metric(row: dict[str, Any], key: str) -> float | None:
    if key.startswith("phase_"):
        return row["phase_wall_s"].get(key[6:])
    return row.get(key)


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        data = b["overrides"] / a["overrides"]
        for key, label in GROWTH.items():
            va, vb = metric(a, key), metric(b, key)
            if not va or not vb or data <= 1:
                continue
            exponent = math.log(vb / va) / math.log(data)
            out.append({"metric": label, "from": a["clients"], "to": b["clients"], "data_ratio": round(data, 2),
                        "ratio": round(vb / va, 2), "exponent": round(exponent, 2),
                        "faster_than_data": exponent > FASTER})
    return out


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def table(rows: list[dict[str, Any]], grown: list[dict[str, Any]]) -> str:
    head = f"{'':<34}" + "".join(f"{r['clients']:>14,}" for r in rows)
    lines = ["migrate.yml -e phase=all, no traffic; per size:", head, "-" * len(head)]

    def line(label: str, values: list[str]) -> None:
        lines.append(f"{label:<34}" + "".join(f"{v:>14}" for v in values))

    line("overrides", [f"{r['overrides']:,}" for r in rows])
    line("wall s (total)", [f"{r['wall_s']:.1f}" for r in rows])
    line("wall s per million overrides", [f"{r['wall_s_per_million_overrides']:.1f}" for r in rows])
    for p in PHASES:
        line(f"phase {p} s (s per M overrides)",
             [f"{r['phase_wall_s'].get(p, 0):.1f} ({r['s_per_million_overrides'].get(p, 0):.1f})" for r in rows])
    line("plan table MiB", [mib(r["plan_table_bytes"]) for r in rows])
    line("WAL written MiB", [mib(r["wal_bytes"]) for r in rows])
    line("WAL bytes per override", [f"{r['wal_bytes'] / r['overrides']:.0f}" for r in rows])
    line("controller peak RSS MiB (sum)", [mib(r["controller_peak_rss_sum_bytes"]) for r in rows])
    line("controller largest process MiB", [mib(r["controller_peak_rss_process_bytes"]) for r in rows])
    line("largest session private MiB", [mib(r["backend_peak_private_rss_bytes"]) for r in rows])
    line("sessions private MiB (sum)", [mib(r["backends_peak_private_rss_sum_bytes"]) for r in rows])
    for r in rows:
        if r["error"]:
            lines.append(f"{r['clients']} FAILED: {r['error'][:300]}")
    if grown:
        lines += ["", "growth exponent against the overrides (1 = linear; > 1.15 faster than the data):"]
        for g in grown:
            flag = "  <-- faster than the data" if g["faster_than_data"] else ""
            lines.append(f"  {g['metric']:<24} {g['from']:>9,} -> {g['to']:>9,}: x{g['ratio']:<6} "
                         f"(data x{g['data_ratio']}) exponent {g['exponent']:.2f}{flag}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG"
    x = [r["overrides"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for p in PHASES:
        axes[0].plot(x, [r["phase_wall_s"].get(p, float("nan")) for r in rows], marker="o", label=f"phase {p}")
    axes[0].plot(x, [r["wall_s"] for r in rows], marker="s", color="black", label="total")
    axes[0].set_title("wall time, s")
    axes[1].plot(x, [r["plan_table_bytes"] / 2**20 for r in rows], marker="o", label="plan table")
    axes[1].plot(x, [r["wal_bytes"] / 2**20 for r in rows], marker="o", label="WAL written")
    axes[1].set_title("MiB")
    axes[2].plot(x, [r["controller_peak_rss_sum_bytes"] / 2**20 for r in rows], marker="o", label="controller (sum)")
    axes[2].plot(x, [r["backend_peak_private_rss_bytes"] / 2**20 for r in rows], marker="o",
                 label="largest session (private)")
    axes[2].set_title("peak memory, MiB")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("overrides")
        # The linear reference through the first point of the first series.
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    ref = rows[0]["wall_s"]
    axes[0].plot(x, [ref * xi / x[0] for xi in x], linestyle=":", color="0.5", label="linear")
    axes[0].legend(fontsize=7)
    fig.suptitle("make bench-scale: migrate.yml -e phase=all without traffic")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--sizes", default="100000,300000,1000000", help="clients per size, comma-separated")
    parser.add_argument("--datadir", help="keep the cluster here (default: a temporary one)")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose migrate.yml runs")
    parser.add_argument("--out", default=str(REPO / "reports"), help="where the JSON and the PNG go")
    parser.add_argument("--poll-s", type=float, default=0.25, help="memory polling interval")
    parser.add_argument("--keep", action="store_true", help="keep each size's database")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        parser.error("--sizes takes clients, e.g. 100000,300000")
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-scale-"))
    base.chmod(0o711)
    datadir = Path(args.datadir) if args.datadir else base / "data"
    started = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    json_path = out / f"bench-scale-{started}.json"
    try:
        info = pgcluster.start_cluster(datadir, password="bench")
        info = pgcluster.configure(info, {**bench_settings(args), "log_line_prefix": "%m [%p] %a ",
                                          "log_min_error_statement": "error"})
        for clients in sizes:
            workdir = base / "work" / str(clients)
            workdir.mkdir(parents=True)
            rows.append(measure_size(info, clients, workdir, args))
            shutil.copy(workdir / "migrate.log", out / f"bench-scale-{started}-{clients}-migrate.log")
            # After every size: an interrupted bench keeps the sizes it measured.
            save(json_path, started, sizes, rows, print_table=False)
    finally:
        # The server's own log (errors, and which session each came from): what a failed size
        # leaves to read once the cluster is gone.
        if (datadir / "server.log").exists():
            shutil.copy(datadir / "server.log", out / f"bench-scale-{started}-server.log")
        if not args.datadir:
            pgcluster.destroy_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)
    save(json_path, started, sizes, rows, print_table=True)
    png = out / f"bench-scale-{started}.png"
    problem = plot(rows, png) if rows else "no size measured"
    print(f"\nbench-scale: {json_path}" + (f"\nbench-scale: {problem}" if problem else f"\nbench-scale: {png}"))
    return 1 if any(r["error"] for r in rows) else 0


def save(path: Path, started: str, sizes: list[int], rows: list[dict[str, Any]], print_table: bool) -> None:
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    grown = growth(rows)
    text = table(rows, grown)
    text += f"\n(getrusage RUSAGE_CHILDREN: the largest process this bench waited for peaked at {mib(children)} MiB)"
    if print_table:
        print()
        print(text)
    report = {"started": started, "sizes": sizes, "rows": rows, "growth": grown, "table": text,
              "host": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
              "rusage_children_maxrss_bytes": children}
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
