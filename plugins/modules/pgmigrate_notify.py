#!/usr/bin/python
# One notification: the generic JSON webhook and the run's local log file (JSON lines, always).
# Slack and e-mail are sent by roles/notify through community.general before this module runs,
# and their outcomes are passed in, so the log line records every channel. Never fails: a channel
# that fails is reported in the result (failed_channels), the migration goes on.
# Playbooks run it through its action plugin (plugins/action/pgmigrate_notify.py), on the
# controller and in process: a message is sent from the controller whatever the host's
# connection, without a module process per message.
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
from ansible.module_utils.pgmigrate_notify import ARGUMENT_SPEC, send


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.check_mode:
        module.exit_json(changed=False, channels={}, failed_channels={}, msg="check mode: nothing sent")
    module.exit_json(**send(module.params))


if __name__ == "__main__":
    main()
