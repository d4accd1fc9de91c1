# Notifications (strategy 2.2): one message shape for every channel, the local log file (always),
# and the generic JSON webhook. Slack and e-mail go through community.general's modules in
# roles/notify; the background sampler uses only the two channels here. Delivery never raises:
# a failing channel is reported, it never fails the migration. URLs are secrets (a Slack webhook
# URL is a credential): they never appear in messages, results or the log.
from __future__ import annotations

import json
import os
import urllib.error
from typing import Any

from ansible.module_utils.urls import open_url
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import utcnow

# pgmigrate_notify's options, shared by the module and its action plugin.
ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "event": {"type": "str", "required": True},
    "text": {"type": "str", "required": True},
    "severity": {"type": "str", "default": "info", "choices": ["info", "warning", "critical"]},
    "details": {"type": "dict", "default": {}},
    "context": {"type": "dict", "default": {}},
    "log_file": {"type": "path", "required": True},
    "webhook_url": {"type": "str", "default": "", "no_log": True},
    "webhook_timeout_s": {"type": "float", "default": 5},
    "other_channels": {"type": "dict", "default": {}},
    # Slack and e-mail: sent by the action plugin through community.general.slack and .mail,
    # only when configured (a token, recipients); the module alone ignores them.
    "slack_token": {"type": "str", "default": "", "no_log": True},
    "slack_channel": {"type": "str", "default": ""},
    "email_to": {"type": "list", "elements": "str", "default": []},
    "email_from": {"type": "str", "default": "pgmigrate@localhost"},
    "smtp_host": {"type": "str", "default": "localhost"},
    "smtp_port": {"type": "int", "default": 25},
    "smtp_username": {"type": "str", "default": ""},
    "smtp_password": {"type": "str", "default": "", "no_log": True},
    "smtp_secure": {"type": "str", "default": "try"},
}


def send(params: dict[str, Any]) -> dict[str, Any]:
    """Deliver one message (validated params); the result the module and the plugin return.
    Sending a message changes nothing in the database: not a change (idempotence is about the
    database), like a log line."""
    payload = message(params["event"], params["text"], params["context"], params["severity"],
                      params["details"])
    channels = deliver(payload, params["log_file"], params["webhook_url"], params["webhook_timeout_s"],
                       {k: str(v) for k, v in params["other_channels"].items()})
    failed = {k: v for k, v in channels.items() if v.startswith("failed")}
    result = {"changed": False, "channels": channels, "failed_channels": failed, "text": payload["text"]}
    if failed:
        # Printed like a debug message (the action plugin shows it): visible, never fatal.
        result["msg"] = (f'Notification "{params["event"]}" not delivered by {", ".join(failed)}: '
                         f'{"; ".join(failed.values())}. The migration goes on.')
    return result


def message(event: str, text: str, context: dict[str, Any], severity: str = "info",
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON every channel gets. `text` is one human line (Slack's incoming webhooks show it)."""
    ctx = context or {}
    prefix = (f"[{ctx.get('environment', '?')}] {ctx.get('playbook', 'migrate')} on {ctx.get('host', '?')} "
              f"({ctx.get('database', '?')})")
    return {
        "text": f"{prefix}: {text}",
        "event": event,
        "severity": severity,
        "at": utcnow(),
        "environment": ctx.get("environment"),
        "host": ctx.get("host"),
        "database": ctx.get("database"),
        "playbook": ctx.get("playbook"),
        "run_id": ctx.get("run_id"),
        "phase": ctx.get("phase"),
        "details": details or {},
    }


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> str:
    """POST the JSON; 'ok', or 'failed: <why>' without the URL."""
    if not url:
        return "skipped"
    data = json.dumps(payload).encode()
    try:
        # Ansible's open_url: the proxy and CA settings every Ansible HTTP client honours.
        with open_url(url, data=data, method="POST", headers={"Content-Type": "application/json"},
                      http_agent="pgmigrate-notify", timeout=timeout_s) as response:
            status = response.status
        return "ok" if 200 <= status < 300 else f"failed: HTTP {status}"
    except urllib.error.HTTPError as exc:
        return f"failed: HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return "failed: " + _scrub(str(exc.reason), [url])
    except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
        return "failed: " + _scrub(f"{type(exc).__name__}: {exc}", [url])


def append_log(path: str, record: dict[str, Any]) -> str:
    """Append one JSON line to the run's notification log (created 0640)."""
    if not path:
        return "skipped"
    try:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        return "ok"
    except OSError as exc:
        return f"failed: {exc.strerror or exc}"


def deliver(payload: dict[str, Any], log_file: str, webhook_url: str, timeout_s: float,
            other_channels: dict[str, str] | None = None) -> dict[str, str]:
    """Webhook first, then the log line recording every channel's outcome (Slack and e-mail's
    too, when the role sent them before)."""
    channels = dict(other_channels or {})
    channels["webhook"] = post_webhook(webhook_url, payload, timeout_s)
    channels["log"] = "ok"
    outcome = append_log(log_file, {**payload, "channels": channels})
    channels["log"] = outcome
    return channels


def read_log(path: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        continue
    except OSError:
        return []
    return records
