#!/usr/bin/python
# One notification: the generic JSON webhook and the run's local log file (JSON lines, always).
# Slack and e-mail are sent by roles/notify through community.general before this module runs,
# and their outcomes are passed in, so the log line records every channel. Never fails: a channel
# that fails is reported in the result (failed_channels), the migration goes on.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_notify
short_description: Send a migration status message to the webhook and the local log
options:
  event: {type: str, required: true}
  text: {type: str, required: true}
  severity: {type: str, default: info, choices: [info, warning, critical]}
  details: {type: dict, default: {}}
  context: {type: dict, default: {}}
  log_file: {type: path, required: true}
  webhook_url: {type: str, default: ""}
  webhook_timeout_s: {type: float, default: 5}
  other_channels: {type: dict, default: {}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_notify import deliver, message


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            event=dict(type="str", required=True),
            text=dict(type="str", required=True),
            severity=dict(type="str", default="info", choices=["info", "warning", "critical"]),
            details=dict(type="dict", default={}),
            context=dict(type="dict", default={}),
            log_file=dict(type="path", required=True),
            webhook_url=dict(type="str", default="", no_log=True),
            webhook_timeout_s=dict(type="float", default=5),
            other_channels=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, channels={}, failed_channels={}, msg="check mode: nothing sent")
    payload = message(p["event"], p["text"], p["context"], p["severity"], p["details"])
    channels = deliver(payload, p["log_file"], p["webhook_url"], p["webhook_timeout_s"],
                       {k: str(v) for k, v in p["other_channels"].items()})
    failed = {k: v for k, v in channels.items() if v.startswith("failed")}
    # Sending a message changes nothing in the database: not a change (idempotence is about the
    # database), like a log line.
    module.exit_json(changed=False, channels=channels, failed_channels=failed, text=payload["text"])


if __name__ == "__main__":
    main()
