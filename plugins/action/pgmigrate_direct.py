# Our modules, run in the worker process on the controller instead of a module process each.
#
# Every pgmigrate_* module talks to the database over libpq from the controller (the hosts use
# ansible_connection: local), so a module process buys nothing: it costs ~0.25 s per task to
# package, start Python, import ansible and psycopg2 again - about a third of a migration's
# fixed cost. Here the module's own main() runs in the task's worker process with the same
# argument spec, check mode, no_log masking and result, the way ansible.netcommon's direct
# execution runs network modules (its "import_modules" option). The arguments and the result
# go through the same JSON profile as a module process's, so the module sees plain values and
# the play sees what it would have seen. The modules import our module_utils by their
# collection names (ansible_collections.agency.pgmigrate.plugins.module_utils.*), which
# ansible-core's collection loader resolves in the worker as it does for AnsiballZ.
#
# A module process is used as usual for an async task (the monitoring sampler), a connection
# other than local (a bastion host), become, or with pgmigrate_direct_execution: false; and
# for every task when this ansible-core is outside the range the runner was tested with
# (_TESTED_ANSIBLE_CORE, docs/collection.md) or lacks an internal it relies on
# (AnsibleModule._load_params and _record_module_result, the module JSON profiles): said once
# per run, in a warning, never a failure.
#
# One file, several names: plugins/action/pgmigrate_<module>.py are symbolic links to this one
# (an action plugin named like a module runs in its place).
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
from types import ModuleType
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.release import __version__ as _ANSIBLE_CORE
from ansible.utils.display import Display

try:
    from ansible.module_utils.common.json import Direction, get_module_decoder, get_module_encoder
    from ansible.vars.clean import remove_internal_keys
except ImportError as _exc:  # an ansible-core before 2.19's module JSON profiles
    _IMPORT_ERROR = f"{_exc.name or _exc}"
else:
    _IMPORT_ERROR = ""

# The ansible-core releases the in-process runner was tested with (tests/test_ansible_versions.py
# runs both ends); meta/runtime.yml's requires_ansible is the collection's wider range.
_TESTED_ANSIBLE_CORE = ">=2.19.0,<2.20.0"
_PROFILE = "legacy"  # what module_common gives a Python module without metadata
_COLLECTION = "agency.pgmigrate"
_UTILS_PACKAGE = "ansible_collections.agency.pgmigrate.plugins.module_utils."


def _in_range(version: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet  # a dependency of ansible-core
    except ImportError:
        return False
    return SpecifierSet(spec).contains(version)


def _why_not_in_process() -> str:
    """'' when the runner can run our modules in process on this ansible-core, else why not."""
    if not _in_range(_ANSIBLE_CORE, _TESTED_ANSIBLE_CORE):
        return f"ansible-core {_ANSIBLE_CORE} is outside the range the in-process runner was tested with" \
               f" ({_TESTED_ANSIBLE_CORE})"
    if _IMPORT_ERROR:
        return f"ansible-core {_ANSIBLE_CORE} lacks {_IMPORT_ERROR}"
    for owner, name in ((AnsibleModule, "_load_params"), (AnsibleModule, "_record_module_result"),
                        (ActionBase, "_parse_returned_data")):
        if not callable(getattr(owner, name, None)):
            return f"ansible-core {_ANSIBLE_CORE} lacks {owner.__name__}.{name}"
    if "profile" not in inspect.signature(ActionBase._parse_returned_data).parameters:
        return f"ansible-core {_ANSIBLE_CORE}'s ActionBase._parse_returned_data takes no JSON profile"
    return ""


_NOT_IN_PROCESS = _why_not_in_process()
# Each task runs in a forked worker, so the flag only spares one worker a repeat; the message is
# the same text every time, which Display prints once per run in the controller.
_warned = False


def _warn_fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        Display().warning(f"{_COLLECTION}: {_NOT_IN_PROCESS}: its modules run as module processes"
                          " (the same results, about 0.25 s more per task)")


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pgmigrate_direct_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DirectModuleAction(ActionBase):
    """Also the base of pgmigrate_notify's and pgmigrate_report's action plugins, which import
    it from ansible_collections.agency.pgmigrate.plugins.action.pgmigrate_direct."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = True

    @staticmethod
    def _module_utils(name: str) -> ModuleType:
        """One of our module_utils files (plugins/module_utils/<name>.py), imported here."""
        return importlib.import_module(_UTILS_PACKAGE + name)

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
        if not boolean(enabled, strict=False):
            return False
        if _NOT_IN_PROCESS:
            _warn_fallback()
            return False
        return True

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
