# Our modules, run in the worker process on the controller instead of a module process each.
#
# Every pgmigrate_* module talks to the database over libpq from the controller (the hosts use
# ansible_connection: local), so a module process buys nothing: it costs ~0.25 s per task to
# package, start Python, import ansible and psycopg2 again - about a third of a migration's
# fixed cost. Here the module's own main() runs in the task's worker process with the same
# argument spec, check mode, no_log masking and result, the way ansible.netcommon's direct
# execution runs network modules (its "import_modules" option). The arguments and the result
# go through the same JSON profile as a module process's, so the module sees plain values and
# the play sees what it would have seen.
#
# A module process is used as usual for an async task (the monitoring sampler), a connection
# other than local (a bastion host), become, or with pgmigrate_direct_execution: false.
#
# One file, several names: plugins/action/pgmigrate_<module>.py are symbolic links to this one
# (an action plugin named like a module runs in its place).
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ansible import constants as C
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.json import Direction, get_module_decoder, get_module_encoder
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.vars.clean import remove_internal_keys

_PROFILE = "legacy"  # what module_common gives a Python module without metadata
_UTILS_PREFIX = "ansible.module_utils."


class _ModuleUtilsFinder(importlib.abc.MetaPathFinder):
    """`from ansible.module_utils.pgmigrate import ...` in the worker: the configured
    module_utils directories (ansible.cfg), which only AnsiballZ packaging knows otherwise."""

    def __init__(self, directories: list[str]) -> None:
        self.directories = [Path(d) for d in directories]

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        del path, target
        if not fullname.startswith(_UTILS_PREFIX) or "." in fullname[len(_UTILS_PREFIX):]:
            return None
        for directory in self.directories:
            candidate = directory / (fullname[len(_UTILS_PREFIX):] + ".py")
            if candidate.is_file():
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def _install_finder() -> None:
    if not any(isinstance(f, _ModuleUtilsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _ModuleUtilsFinder(list(C.DEFAULT_MODULE_UTILS_PATH or [])))


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pgmigrate_direct_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DirectModuleAction(ActionBase):
    """Also the base of pgmigrate_notify's and pgmigrate_report's action plugins, which get it
    with action_loader.get("pgmigrate_direct", class_only=True)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = True

    @staticmethod
    def _module_utils(name: str) -> ModuleType:
        """One of our module_utils files (ansible.module_utils.<name>), imported here."""
        _install_finder()
        return importlib.import_module(_UTILS_PREFIX + name)

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        result.update(self._run_module(self._task.action, dict(self._task.args), task_vars or {}))
        return result

    def _direct(self, task_vars: dict[str, Any]) -> bool:
        # become switches user for a module process; the worker cannot.
        if self._task.async_val or self._connection.transport != "local" or self._play_context.become:
            return False
        enabled = task_vars.get("pgmigrate_direct_execution", True)
        if isinstance(enabled, str):  # an inventory's "false", or a template
            enabled = self._templar.template(enabled)
        return boolean(enabled, strict=False)

    def _run_module(self, name: str, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        """The module's result, from main() here or from a module process."""
        if not self._direct(task_vars):
            wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
            try:
                return self._execute_module(module_name=name, module_args=args, task_vars=task_vars,
                                            wrap_async=wrap_async)
            finally:
                if not wrap_async:
                    self._remove_tmp_path(self._connection._shell.tmpdir)
        short = name.rsplit(".", 1)[-1]
        context = self._shared_loader_obj.module_loader.find_plugin_with_context(
            name, collection_list=self._task.collections)
        if not context.resolved:
            return {"failed": True, "msg": f"module {name} not found"}
        _install_finder()
        module = _load(context.plugin_resolved_path, short)
        self._update_module_args(short, args, task_vars)
        # Through the profile a module process would get its arguments in: plain values, no tags.
        encoder = get_module_encoder(_PROFILE, Direction.CONTROLLER_TO_MODULE)
        decoder = get_module_decoder(_PROFILE, Direction.CONTROLLER_TO_MODULE)
        params = json.loads(json.dumps(args, cls=encoder), cls=decoder)
        recorded: list[dict[str, Any]] = []

        class Direct(AnsibleModule):
            def _load_params(self) -> None:
                self.params = params

            def _record_module_result(self, o: dict[str, Any]) -> None:
                recorded.append(o)

        module.AnsibleModule = Direct
        # A stray print() must not reach Ansible's own output.
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            module.main()
        if not recorded:
            return {"failed": True, "msg": f"{short} returned no result", "module_stdout": out.getvalue()}
        m2c = get_module_encoder(_PROFILE, Direction.MODULE_TO_CONTROLLER)
        data = self._parse_returned_data({"stdout": json.dumps(recorded[-1], cls=m2c), "stderr": "", "rc": 0},
                                         _PROFILE)
        remove_internal_keys(data)
        return data


ActionModule = DirectModuleAction
