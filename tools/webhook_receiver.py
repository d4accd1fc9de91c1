#!/usr/bin/env python3
"""A throwaway webhook receiver (and SMTP sink) on loopback, for tests and rehearsals.

Standard library only. It accepts JSON POSTs on http://127.0.0.1:<port>/ and appends each body
as one line to a JSON-lines file; with --smtp-port it also accepts mail and appends each
message ({"from", "to", "subject", "body"}) to the same kind of file. It stops by itself after
--max-seconds (default 900), so a forgotten receiver never lingers.

Command line::

    webhook_receiver.py --out messages.jsonl [--port 0] [--status 200] [--max-seconds 900]
                        [--smtp-port 0 --smtp-out mails.jsonl]

It prints one JSON line with the ports it listens on, then serves. --status 500 makes every
POST fail (a dead-but-listening webhook). Library use::

    with WebhookReceiver() as hook:        # a free port, in a thread
        url = hook.url
        ...
        messages = hook.messages()
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import json
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def _append(path: Path, record: dict[str, Any], lock: threading.Lock) -> None:
    with lock, path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_http_server(out: Path, status: int = 200, port: int = 0) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
            _append(out, {"path": self.path, "content_type": self.headers.get("Content-Type"),
                          "body": body, "status": status}, lock)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}' if status < 300 else b'{"ok": false}')

        def log_message(self, *args: Any) -> None:
            return

    return ThreadingHTTPServer((HOST, port), Handler)


def make_smtp_server(out: Path, port: int = 0) -> socketserver.ThreadingTCPServer:
    """A minimal SMTP sink (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT): enough for smtplib."""
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write((line + "\r\n").encode())

        def handle(self) -> None:
            # A client probing with TLS first (secure=try) hangs up on us: not an error here.
            with contextlib.suppress(ConnectionError):
                self.converse()

        def converse(self) -> None:
            self.reply("220 localhost pgmigrate test sink")
            sender, rcpts = "", []
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\r\n")
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    self.reply("250-localhost")
                    self.reply("250 8BITMIME")
                elif verb == "HELO":
                    self.reply("250 localhost")
                elif verb == "MAIL":
                    sender, rcpts = line.split(":", 1)[1].strip(), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    rcpts.append(line.split(":", 1)[1].strip())
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    lines = []
                    while True:
                        data = self.rfile.readline().decode(errors="replace")
                        if data in (".\r\n", ".\n", ""):
                            break
                        lines.append(data[1:] if data.startswith("..") else data)
                    msg = email.message_from_string("".join(lines), policy=email.policy.default)
                    body = msg.get_body(preferencelist=("plain",))
                    _append(out, {"from": sender, "to": rcpts, "subject": str(msg["Subject"] or ""),
                                  "body": body.get_content() if body else ""}, lock)
                    self.reply("250 OK")
                elif verb in ("RSET", "NOOP"):
                    self.reply("250 OK")
                elif verb == "QUIT":
                    self.reply("221 Bye")
                    return
                else:
                    self.reply("502 Command not implemented")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((HOST, port), Handler)
    server.daemon_threads = True
    return server


class WebhookReceiver:
    """The receiver in a background thread of this process (for pytest)."""

    def __init__(self, directory: Path, status: int = 200, smtp: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.out = directory / "webhook.jsonl"
        self.mail_out = directory / "mail.jsonl"
        self.http = make_http_server(self.out, status)
        self.smtp = make_smtp_server(self.mail_out) if smtp else None
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True)
                         for s in (self.http, self.smtp) if s is not None]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http.server_address[1]}/hook"

    @property
    def smtp_port(self) -> int:
        return self.smtp.server_address[1] if self.smtp else 0

    def messages(self) -> list[dict[str, Any]]:
        return [r["body"] for r in _read(self.out)]

    def mails(self) -> list[dict[str, Any]]:
        return _read(self.mail_out)

    def __enter__(self) -> WebhookReceiver:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self.http, self.smtp):
            if server is not None:
                server.shutdown()
                server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file of received POST bodies")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--status", type=int, default=200, help="HTTP status every POST gets")
    parser.add_argument("--smtp-port", type=int, default=None, help="also an SMTP sink on this port (0: free)")
    parser.add_argument("--smtp-out", type=Path, help="JSON-lines file of received mails")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop after this long")
    args = parser.parse_args(argv)
    if args.smtp_port is not None and args.smtp_out is None:
        parser.error("--smtp-port needs --smtp-out")
    http = make_http_server(args.out, args.status, args.port)
    servers: list[Any] = [http]
    ports = {"http_port": http.server_address[1], "url": f"http://{HOST}:{http.server_address[1]}/hook"}
    if args.smtp_port is not None:
        smtp = make_smtp_server(args.smtp_out, args.smtp_port)
        servers.append(smtp)
        ports["smtp_port"] = smtp.server_address[1]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps(ports), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        time.sleep(args.max_seconds)
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
