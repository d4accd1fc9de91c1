# pgmigrate_report, then the completion announcement rendered and written on the controller, in
# process: the announcement needs the report's figures (the module's result, as report_written),
# and as an ansible.builtin.template task it cost two more module processes (stat, copy). The
# module itself runs like every pgmigrate_* module (pgmigrate_direct.py).
from __future__ import annotations

import os
from typing import Any

from ansible.plugins.action import ActionBase

try:
    from ansible.template import trust_as_template
except ImportError:  # ansible-core before 2.19 trusts every template it reads (no data tagging)
    def trust_as_template(value: str) -> str:
        return value

from ansible_collections.agency.pgmigrate.plugins.action.pgmigrate_direct import DirectModuleAction


class ActionModule(DirectModuleAction):

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        # ActionBase's run: the base class's own would run the module already.
        result = ActionBase.run(self, tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        module_args = dict(self._task.args)
        announcement = module_args.pop("announcement", None)
        result.update(self._run_module("agency.pgmigrate.pgmigrate_report", module_args, task_vars))
        if announcement and not result.get("failed") and not self._task.check_mode:
            result["announcement"] = self._announce(announcement, task_vars, result)
        return result

    def _announce(self, announcement: dict[str, Any], task_vars: dict[str, Any], written: dict[str, Any]) -> str:
        source = self._find_needle("templates", announcement["src"])
        template = trust_as_template(self._loader.get_text_file_contents(source))
        templar = self._templar.copy_with_new_env(available_variables={**task_vars, "report_written": written})
        text = templar.template(template, escape_backslashes=False)
        dest = announcement["dest"]
        partial = dest + ".tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(partial, dest)
        return dest
