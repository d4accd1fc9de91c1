"""Real Prometheus servers for the tests (Debian's packages, installed by tools/ensure-prometheus.sh):
a Pushgateway, and a Prometheus scraping an exporter the test serves with figures it controls.

    pushgateway (fixture, module)   {"url"} of a prometheus-pushgateway on a free port
    prometheus  (fixture, module)   a Prometheus (scrape every second) and the Exporter it scrapes
    Exporter                        /metrics with an HTTP latency histogram and request counter that
                                    grow at a rate the test sets: healthy, slow, or failing
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} not ready at {url} after {timeout_s} s")


class Exporter:
    """The application's own metrics: every second `rate` requests, each taking `latency_s`,
    a share `error_ratio` of them answered 500. Counters only grow, as a real client's do."""

    def __init__(self) -> None:
        self.rate, self.latency_s, self.error_ratio = 20.0, 0.03, 0.0
        self._counts = dict.fromkeys((*BUCKETS, float("inf")), 0.0)
        self._sum = self._ok = self._err = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def set(self, latency_s: float | None = None, error_ratio: float | None = None,
            rate: float | None = None) -> None:
        with self._lock:
            self._advance()
            if rate is not None:
                self.rate = rate
            if latency_s is not None:
                self.latency_s = latency_s
            if error_ratio is not None:
                self.error_ratio = error_ratio

    def _advance(self) -> None:
        now = time.monotonic()
        n = self.rate * (now - self._last)
        self._last = now
        for b in self._counts:
            if self.latency_s <= b:
                self._counts[b] += n
        self._sum += n * self.latency_s
        self._err += n * self.error_ratio
        self._ok += n * (1 - self.error_ratio)

    def render(self) -> str:
        with self._lock:
            self._advance()
            lines = ["# TYPE http_request_duration_seconds histogram"]
            for b, c in self._counts.items():
                le = "+Inf" if b == float("inf") else f"{b:g}"
                lines.append(f'http_request_duration_seconds_bucket{{le="{le}"}} {c:.3f}')
            total = self._ok + self._err
            lines += [f"http_request_duration_seconds_sum {self._sum:.3f}",
                      f"http_request_duration_seconds_count {total:.3f}",
                      "# TYPE http_requests_total counter",
                      f'http_requests_total{{code="200"}} {self._ok:.3f}',
                      f'http_requests_total{{code="500"}} {self._err:.3f}']
            return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is missing: run tools/ensure-prometheus.sh (make pytest does)")
    return found


@pytest.fixture(scope="module", name="pushgateway")
def pushgateway_fixture() -> Iterator[dict[str, Any]]:
    port = free_port()
    proc = subprocess.Popen([_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/-/ready", proc, "prometheus-pushgateway")
        yield {"url": url}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module", name="prometheus")
def prometheus_fixture() -> Iterator[dict[str, Any]]:
    exporter = Exporter()
    workdir = Path(tempfile.mkdtemp(prefix="pytest-prometheus-"))
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: app\n    static_configs: [{{targets: ['{exporter.target}']}}]\n")
    port = free_port()
    proc = subprocess.Popen([_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/-/ready", proc, "prometheus")
        yield {"url": url, "exporter": exporter}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        exporter.close()
        shutil.rmtree(workdir, ignore_errors=True)
