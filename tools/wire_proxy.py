"""A TCP proxy in front of PostgreSQL that records the client's queries and can add latency (not a
test module).

    with WireProxy(host, port, delay_ms=20) as proxy:
        db = {**db, "host": "127.0.0.1", "port": proxy.port}   # connect through it
        ...
        proxy.queries()    # [(connection number, time received, SQL text)], every simple query
        proxy.by_connection()   # {connection number: [SQL text, ...]}

Each direction forwards what it reads after `delay_ms` (a one-way delay: a round trip costs
twice that), without holding back what follows: bandwidth is unchanged, as on a long link. The
client's stream is parsed as PostgreSQL's protocol 3 (startup packets without a type byte, then
typed messages) only to record the text of each simple Query ('Q') message: which statements a
client sent in one round trip, and in what order. Not a mock: the server is real, and so is
every byte it receives.
"""

from __future__ import annotations

import contextlib
import heapq
import socket
import struct
import threading
import time
from typing import Any

# Startup-phase request codes that are followed by another startup packet.
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class WireProxy:
    def __init__(self, host: str, port: int, delay_ms: float = 0.0) -> None:
        self.upstream = (host, int(port))
        self.delay_s = delay_ms / 1000.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._queries: list[tuple[int, float, str]] = []
        self._connections = 0
        self._closing = False
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> WireProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def queries(self) -> list[tuple[int, float, str]]:
        with self._lock:
            return list(self._queries)

    def by_connection(self) -> dict[int, list[str]]:
        """Each connection's query texts, in the order it sent them."""
        out: dict[int, list[str]] = {}
        for number, _at, text in self.queries():
            out.setdefault(number, []).append(text)
        return out

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += 1
                number = self._connections
                self._sockets += [client, server]
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = _ClientStream(lambda text, n=number: self._record(n, text))
            for src, dst, watch in ((client, server, parser), (server, client, None)):
                threading.Thread(target=self._pump, args=(src, dst, watch), daemon=True).start()

    def _record(self, number: int, text: str) -> None:
        with self._lock:
            self._queries.append((number, time.monotonic(), text))

    def _pump(self, src: socket.socket, dst: socket.socket, watch: _ClientStream | None) -> None:
        """Read src, forward to dst `delay_s` after each chunk arrived (a sender thread keeps
        reading meanwhile, so latency adds no throttling)."""
        pending: list[tuple[float, int, bytes]] = []
        ready = threading.Condition()
        done = [False]

        def sender() -> None:
            while True:
                with ready:
                    while not pending and not done[0]:
                        ready.wait()
                    if not pending:
                        break
                    due, _, chunk = pending[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        ready.wait(wait)
                        continue
                    heapq.heappop(pending)
                try:
                    dst.sendall(chunk)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        sequence = 0
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            if watch is not None:
                watch.feed(chunk)
            with ready:
                sequence += 1
                heapq.heappush(pending, (time.monotonic() + self.delay_s, sequence, chunk))
                ready.notify()
        with ready:
            done[0] = True
            ready.notify()
        thread.join()


class _ClientStream:
    """Splits the client's byte stream into protocol messages; reports each Query's text."""

    def __init__(self, on_query: Any) -> None:
        self.buffer = b""
        self.startup = True
        self.on_query = on_query

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.startup:
                if len(self.buffer) < 8:
                    return
                length, code = struct.unpack("!II", self.buffer[:8])
                if len(self.buffer) < length:
                    return
                self.buffer = self.buffer[length:]
                # After SSLRequest or GSSENCRequest (refused by a test server) comes the real
                # startup packet; any other ends the startup phase.
                self.startup = code in (_SSL_REQUEST, _GSSENC_REQUEST)
                continue
            if len(self.buffer) < 5:
                return
            kind = self.buffer[:1]
            (length,) = struct.unpack("!I", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            body, self.buffer = self.buffer[5:1 + length], self.buffer[1 + length:]
            if kind == b"Q":
                self.on_query(body.rstrip(b"\x00").decode("utf-8", "replace"))
