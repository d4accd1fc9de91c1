# pgmigrate_notify on the controller: the message is built and delivered (webhook, local log) in
# the worker process, with the module's own argument spec and code (module_utils), instead of
# starting a module process per message. A full run sends a dozen messages; as module calls they
# cost about 0.3 s each on a small controller, in process a few milliseconds. Notifications
# belong to the controller anyway (the log lives in its reports/ directory).
# Slack and e-mail, when configured, go through community.general.slack and .mail from here
# (one task per message instead of a role include with a task per channel); their outcomes are
# recorded in the log line like the webhook's. A failing channel is printed (like a debug
# message) and never fails the task.
from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase
from ansible.plugins.filter.core import to_nice_yaml
from ansible_collections.agency.pgmigrate.plugins.action.pgmigrate_direct import DirectModuleAction

_SLACK_COLOURS = {"info": "good", "warning": "warning", "critical": "danger"}


def _subject(text: str) -> str:
    # Jinja's truncate(150, true), as roles/notify used: 5 characters of leeway.
    return text if len(text) <= 155 else text[:147] + "..."


# The base brings the import of our module_utils (pgmigrate_direct.py); messages are never async.
class ActionModule(DirectModuleAction):
    _supports_async = False

    def _channel(self, module: str, module_args: dict[str, Any], task_vars: dict[str, Any]) -> str:
        """'ok', or 'failed: <the module's message>' (the module hides its own secrets)."""
        try:
            outcome = self._execute_module(module_name=module, module_args=module_args, task_vars=task_vars)
        except Exception as exc:  # noqa: BLE001 - a failing channel is reported, never raised
            return f"failed: {type(exc).__name__}"
        if outcome.get("failed"):
            return "failed: " + str(outcome.get("msg") or "error")
        return "ok"

    def _other_channels(self, args: dict[str, Any], text: str, task_vars: dict[str, Any]) -> dict[str, str]:
        channels = {k: str(v) for k, v in args["other_channels"].items()}
        if args["slack_token"]:
            slack = {"token": args["slack_token"], "msg": text, "color": _SLACK_COLOURS[args["severity"]]}
            if args["slack_channel"]:
                slack["channel"] = args["slack_channel"]
            channels["slack"] = self._channel("community.general.slack", slack, task_vars)
        if args["email_to"]:
            mail = {"host": args["smtp_host"], "port": args["smtp_port"], "secure": args["smtp_secure"],
                    "sender": args["email_from"], "to": args["email_to"], "subject": _subject(text),
                    "body": f"{text}\n\n{to_nice_yaml(args['details'], indent=2)}",
                    "timeout": int(args["webhook_timeout_s"])}
            if args["smtp_username"]:
                mail["username"] = args["smtp_username"]
            if args["smtp_password"]:
                mail["password"] = args["smtp_password"]
            channels["email"] = self._channel("community.general.mail", mail, task_vars)
        return channels

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        # ActionBase's run: the base class's own would run the module already.
        result = ActionBase.run(self, tmp, task_vars)
        del tmp
        shared = self._module_utils("pgmigrate_notify")
        validation, args = self.validate_argument_spec(argument_spec=shared.ARGUMENT_SPEC)
        del validation
        if self._task.check_mode:
            result.update(changed=False, channels={}, failed_channels={}, msg="check mode: nothing sent")
            return result
        if args["slack_token"] or args["email_to"]:
            text = shared.message(args["event"], args["text"], args["context"])["text"]
            try:
                args = {**args, "other_channels": self._other_channels(args, text, task_vars or {})}
            finally:
                self._remove_tmp_path(self._connection._shell.tmpdir)
        result.update(shared.send(args))
        if result["failed_channels"]:
            result["_ansible_verbose_always"] = True
        return result
