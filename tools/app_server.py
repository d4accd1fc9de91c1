#!/usr/bin/env python3
"""A small HTTP application that answers from the migrated database, for the tests of
migration_app_checks (strategy 3.6, "Validate API endpoints") and for trying them by hand.

    GET /health                         {"status": "ok", "overrides": N}: today's read of the overrides
    GET /api/clients/<id>/overrides     today's application: a client's overrides (app, enabled)
    GET /api/dashboard                  a tenant's view: Authorization: Bearer <JWT, HS256>; the session
                                        runs as `authenticated` with the token's claims in
                                        request.jwt.claims (Supabase's way), and reads
                                        unified_client_dashboard; {"client_id", "rows", "clients_seen"}

Errors answer 401 (no or bad token), 404, or 503 with {"error": ...} when the database fails
(unreachable, a missing view, a revoked grant). `broken` (no database) and `delay_s` can be set
on a running server by its owner (the tests), so the same server is healthy, then broken or slow.

    python tools/app_server.py --dsn "host=127.0.0.1 port=5432 dbname=agency user=postgres" --secret S
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg2


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(claims: dict[str, Any], secret: str) -> str:
    """An HS256 JWT, as Supabase issues them."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def read_jwt(token: str, secret: str) -> dict[str, Any] | None:
    try:
        head, body, sig = token.split(".")
    except ValueError:
        return None
    expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(sig)):
        return None
    claims = json.loads(_unb64(body))
    if "exp" in claims and float(claims["exp"]) < time.time():
        return None
    return claims


class AppServer:
    """The application in a thread: start with `with AppServer(dsn, secret) as app: app.url`."""

    def __init__(self, dsn: str, secret: str, port: int = 0) -> None:
        self.dsn = dsn
        self.secret = secret
        self.broken = False  # True: the application has lost its database
        self.delay_s = 0.0
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> AppServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _connect(self) -> Any:
        if self.broken:
            raise psycopg2.OperationalError("the application cannot reach its database")
        return psycopg2.connect(self.dsn, connect_timeout=5, application_name="app-server")

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            if path == "/health":
                return 200, {"status": "ok", "overrides": self._scalar("SELECT count(*) FROM client_app_overrides")}
            match = re.fullmatch(r"/api/clients/([0-9a-f-]{36})/overrides", path)
            if match:
                return 200, {"overrides": self._rows(
                    "SELECT app_name, enabled FROM client_app_overrides WHERE client_id = %s ORDER BY app_name",
                    (match.group(1),))}
            if path == "/api/dashboard":
                auth = headers.get("authorization", "")
                claims = read_jwt(auth[7:], self.secret) if auth.lower().startswith("bearer ") else None
                if claims is None:
                    return 401, {"error": "a valid bearer token is required"}
                return 200, self._dashboard(claims)
            return 404, {"error": f"no such endpoint {path}"}
        except psycopg2.Error as exc:
            return 503, {"error": str(exc).strip().splitlines()[0]}

    def _scalar(self, sql: str) -> Any:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0]
        finally:
            conn.close()

    def _rows(self, sql: str, args: tuple) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                names = [c.name for c in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def _dashboard(self, claims: dict[str, Any]) -> dict[str, Any]:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                # What PostgREST does for a request with a JWT: the claims, then the role.
                cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                cur.execute("SET LOCAL ROLE authenticated")
                cur.execute("SELECT client_id::text, app_overrides FROM unified_client_dashboard")
                rows = cur.fetchall()
            conn.rollback()
        finally:
            conn.close()
        seen = sorted({r[0] for r in rows})
        return {"client_id": claims.get("app_metadata", {}).get("client_id"), "rows": len(rows),
                "clients_seen": len(seen), "overrides": sum(int(r[1]) for r in rows)}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                status, body = app.answer(self.path, {k.lower(): v for k, v in self.headers.items()})
                data = json.dumps(body, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--secret", required=True, help="the JWT signing secret")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    with AppServer(args.dsn, args.secret, args.port) as app:
        print(f"app_server: listening on {app.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
