#!/usr/bin/python
# One notification: the generic JSON webhook and the run's local log file (JSON lines, always).
# Playbooks run it through its action plugin (plugins/action/pgmigrate_notify.py), on the
# controller and in process: a message is sent from the controller whatever the host's
# connection, without a module process per message; the plugin also sends Slack and e-mail
# (community.general) when they are configured, and the log line records every channel. Never
# fails: a channel that fails is reported in the result (failed_channels, msg), the migration
# goes on. Tasks get the channel settings from module_defaults (__migration_notify).
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
  slack_token: {type: str, default: ""}
  slack_channel: {type: str, default: ""}
  email_to: {type: list, elements: str, default: []}
  email_from: {type: str, default: pgmigrate@localhost}
  smtp_host: {type: str, default: localhost}
  smtp_port: {type: int, default: 25}
  smtp_username: {type: str, default: ""}
  smtp_password: {type: str, default: ""}
  smtp_secure: {type: str, default: try}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_notify import ARGUMENT_SPEC, send


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.check_mode:
        module.exit_json(changed=False, channels={}, failed_channels={}, msg="check mode: nothing sent")
    module.exit_json(**send(module.params))


if __name__ == "__main__":
    main()
