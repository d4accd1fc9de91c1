"""Today's application's own signal, as its metrics would show it, for (b)'s throttle.

An application behind a migration falls behind in its own queue before the database shows it
(docs/benchmarks.md, run 19): the throttle reads the application's latency from Prometheus when
migration_prometheus_url is set (module_utils/pgmigrate_throttle.py, app_latency). pgbench is
the bench's application: with -P 1 it prints, every second, the transactions completed and their
mean latency from the scheduled start (under --rate, the schedule lag is inside it). AppSignal
serves the newest of those lines as gauges on an HTTP endpoint, and runs a Prometheus (Debian's,
tools/ensure-prometheus.sh) scraping it every second, whose URL (b) gets:

    bench_app_latency_ms   the last second's mean latency from the scheduled start; during a
                           second with nothing completed, the time since the last completion
    bench_app_tps          transactions completed in the last second
    bench_app_following    1 while a stream is followed (absent: no traffic, nothing to judge)
"""

from __future__ import annotations

import math
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# pgbench 15's progress line: "progress: 5.0 s, 6716.9 tps, lat 0.306 ms stddev 0.185, 0 failed,
# lag 0.040 ms" (failed from 15; NaN latency in a second with nothing completed).
PROGRESS = re.compile(r"progress: [\d.]+ s, (?P<tps>[\d.]+) tps, lat (?P<lat>[\d.]+|nan|NaN) ms")
SCRAPE_S = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppSignal:
    """The exporter and its Prometheus; follow() points it at a stream's stderr (pgbench -P 1)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.last_completion = time.time()
        self._lock = threading.Lock()
        signal = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = signal.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._dir = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-prometheus-"))
        self.port = free_port()
        config = self._dir / "prometheus.yml"
        target = f"127.0.0.1:{self._server.server_address[1]}"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_S}s, evaluation_interval: {SCRAPE_S}s}}\n"
            "scrape_configs:\n"
            f"  - job_name: bench_app\n    static_configs: [{{targets: ['{target}']}}]\n")
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: run tools/ensure-prometheus.sh, or --no-app-signal")
        self._proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self._dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(self._dir / "prometheus.log").open("w"))
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode} "
                                   f"({(self._dir / 'prometheus.log').read_text()[-500:]})")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready at {self.url} after {timeout_s:g} s")

    def follow(self, path: Path | None) -> None:
        with self._lock:
            self.path = path
            self.last_completion = time.time()

    def reading(self) -> tuple[float, float] | None:
        """(latency ms, tps) of the newest progress line of the followed stream."""
        with self._lock:
            path = self.path
        if path is None or not path.exists():
            return None
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4096))
            tail = handle.read().decode(errors="replace")
        found = list(PROGRESS.finditer(tail))
        if not found:
            return None
        tps, lat = float(found[-1].group("tps")), float(found[-1].group("lat"))
        if tps > 0 and not math.isnan(lat):
            self.last_completion = time.time()
            return lat, tps
        return 1000.0 * (time.time() - self.last_completion), tps

    def render(self) -> str:
        seen = self.reading()
        if seen is None:
            return "# nothing followed\n"
        lat, tps = seen
        return ("# TYPE bench_app_latency_ms gauge\n"
                f"bench_app_latency_ms {lat:.3f}\n"
                "# TYPE bench_app_tps gauge\n"
                f"bench_app_tps {tps:.1f}\n"
                "# TYPE bench_app_following gauge\n"
                "bench_app_following 1\n")

    def extra_vars(self) -> dict[str, Any]:
        """What (b) gets: the throttle watches the application's latency (its limits: the
        throttle's, +5 ms slows the batches down and +20 ms pauses them, over its reading at the
        start); the checkpoints read it as the API's p95 too, their abort threshold out of the
        way as the degradation's is (the bench measures the latency itself)."""
        return {
            "migration_prometheus_url": self.url,
            "migration_throttle_app_latency_query": "bench_app_latency_ms",
            "migration_throttle_app_rate_query": "",
            "migration_throttle_prometheus_interval_s": SCRAPE_S,
            "migration_prometheus_p95_query": "bench_app_latency_ms",
            # pgbench's failures are counted from its log after the run.
            "migration_prometheus_error_query": "vector(0)",
            "migration_alert_p95_ms": 1e9,
            # No traffic (the copy migrated for the capacity with the transition open): nothing to read.
            "migration_prometheus_unknown_stops": False,
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
