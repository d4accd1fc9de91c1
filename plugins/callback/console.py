# The project's console output: ansible-core's default callback, unchanged, except for
# `playbooks/status.yml -e status_format=json`, whose stdout must be the status JSON alone so that
# `ansible-playbook playbooks/status.yml -e status_format=json | jq .` works. There, everything the
# default callback prints (banners, task results, the recap, errors), and anything else written to
# the process's stdout, goes to stderr instead, and the one result carrying `pgmigrate_status`
# (status.yml's last debug task) is written to the real stdout as JSON. ansible-core's own
# warnings and errors go to stderr already.
#
# Why a stdout callback and not an option of the playbook: the callback is chosen before any
# play runs, by ansible.cfg or ANSIBLE_STDOUT_CALLBACK; an extra variable cannot choose it, but
# the callback can read the extra variables when the playbook starts (docs/operations.md).
from __future__ import annotations

DOCUMENTATION = r"""
name: console
type: stdout
short_description: The default output, or status.yml's JSON alone on stdout
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - ansible-core's default stdout callback, unchanged, for every playbook.
  - For C(status.yml) run with C(-e status_format=json), stdout carries only the status JSON (one
    document, every database); all the default callback prints goes to stderr.
  - Set by the checkout's C(ansible.cfg) (C(stdout_callback = agency.pgmigrate.console)); with the
    installed collection, C(ANSIBLE_STDOUT_CALLBACK=agency.pgmigrate.console).
extends_documentation_fragment:
  - ansible.builtin.default_callback
  - ansible.builtin.result_format_callback
requirements:
  - set as stdout in configuration
"""

import json
import os
import sys
from typing import Any

from ansible.plugins.callback.default import CallbackModule as DefaultCallback
from ansible.utils.vars import load_extra_vars

# The variable status.yml prints with -e status_format=json.
STATUS_VAR = "pgmigrate_status"
STATUS_PLAYBOOK = "status.yml"


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "agency.pgmigrate.console"

    def __init__(self) -> None:
        super().__init__()
        self._json_only = False
        self._json_out: Any = None

    def v2_playbook_on_start(self, playbook: Any) -> None:
        try:  # the extra variables as ansible-playbook parsed them (cached by load_extra_vars)
            extra = load_extra_vars(playbook._loader)
        except Exception:  # noqa: BLE001 - never break the output over this
            extra = {}
        name = os.path.basename(getattr(playbook, "_file_name", "") or "")
        if name == STATUS_PLAYBOOK and str(extra.get("status_format", "")).strip() == "json":
            # stdout is kept for the JSON alone; file descriptor 1 becomes stderr, so whatever
            # else writes to stdout, here or in the worker processes forked later, goes there.
            sys.stdout.flush()
            self._json_out = os.fdopen(os.dup(1), "w")
            os.dup2(2, 1)
            self._json_only = True
        super().v2_playbook_on_start(playbook)

    def v2_runner_on_ok(self, result: Any) -> None:
        found = getattr(result, "result", None)
        if found is None:  # ansible-core before 2.19's CallbackTaskResult
            found = getattr(result, "_result", {})
        if self._json_only and isinstance(found, dict) and STATUS_VAR in found:
            self._json_out.write(json.dumps(found[STATUS_VAR], indent=2, default=str) + "\n")
            self._json_out.flush()
            return
        super().v2_runner_on_ok(result)
