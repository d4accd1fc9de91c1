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
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - One notification with one message shape for every channel - the run's local log file (JSON
    lines, always) and the generic JSON webhook when I(webhook_url) is set.
  - Playbooks run it through its action plugin, on the controller and in process; the plugin also
    sends Slack (community.general.slack) and e-mail (community.general.mail) when they are
    configured. The module alone ignores those options.
  - Never fails - a channel that fails is reported in C(failed_channels) and C(msg), and the
    migration goes on. Never reports a change. In check mode nothing is sent.
  - Webhook URLs, tokens and passwords never appear in messages, results or the log.
options:
  event:
    description: >-
      What happened (C(phase_started), C(phase_finished), C(alert), C(stopped), ...); the message's
      C(event).
    type: str
    required: true
  text:
    description: One human line (Slack shows it).
    type: str
    required: true
  severity:
    description: The message's severity.
    type: str
    default: info
    choices: [info, warning, critical]
  details:
    description: Structured details, sent as the message's C(details).
    type: dict
    default: {}
  context:
    description: The run's context (run id, playbook, host, environment), sent with every message.
    type: dict
    default: {}
  log_file:
    description: The run's notification log, one JSON line per message, always written.
    type: path
    required: true
  webhook_url:
    description: The generic JSON webhook (POST); empty - none. A secret (C(no_log)).
    type: str
    default: ""
  webhook_timeout_s:
    description: Seconds a webhook delivery may take.
    type: float
    default: 5
  other_channels:
    description: Channel name to outcome of channels delivered elsewhere, recorded in the log line.
    type: dict
    default: {}
  slack_token:
    description: Slack token or webhook path, for the action plugin (C(no_log)); empty - no Slack.
    type: str
    default: ""
  slack_channel:
    description: The Slack channel, for the action plugin.
    type: str
    default: ""
  email_to:
    description: E-mail recipients, for the action plugin; empty - no e-mail.
    type: list
    elements: str
    default: []
  email_from:
    description: The e-mail sender.
    type: str
    default: pgmigrate@localhost
  smtp_host:
    description: The SMTP server.
    type: str
    default: localhost
  smtp_port:
    description: The SMTP port.
    type: int
    default: 25
  smtp_username:
    description: The SMTP login; empty - none.
    type: str
    default: ""
  smtp_password:
    description: The SMTP password (C(no_log)).
    type: str
    default: ""
  smtp_secure:
    description: community.general.mail's C(secure) (C(always), C(never), C(try), C(starttls)).
    type: str
    default: try
"""

EXAMPLES = r"""
- name: Announce the end of a phase
  agency.pgmigrate.pgmigrate_notify:
    event: phase_finished
    severity: info
    text: phase 2 schema applied in 3.1 s
    details: {phase: "2"}
    log_file: reports/notifications.jsonl
    webhook_url: "{{ vault_webhook_url }}"
"""

RETURN = r"""
channels:
  description: "Channel name to outcome: C(ok), C(skipped) (not configured) or C(failed: <why>)."
  returned: always
  type: dict
  sample: {webhook: ok, log: ok}
failed_channels:
  description: The channels that failed, with why.
  returned: always
  type: dict
text:
  description: The message's text as sent.
  returned: when sent
  type: str
msg:
  description: Which channels failed; the migration goes on.
  returned: when a channel failed, or in check mode
  type: str
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
