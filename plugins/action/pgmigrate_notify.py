# pgmigrate_notify on the controller: the message is built and delivered (webhook, local log) in
# the worker process, with the module's own argument spec and code (module_utils), instead of
# starting a module process per message. A full run sends a dozen messages; as module calls they
# cost about 0.3 s each on a small controller, in process a few milliseconds. Notifications
# belong to the controller anyway (the log lives in its reports/ directory).
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

_SHARED = Path(__file__).resolve().parents[1] / "module_utils" / "pgmigrate_notify.py"


def _load_shared() -> Any:
    # A playbook-adjacent module_utils file is not importable on the controller by name.
    spec = importlib.util.spec_from_file_location("pgmigrate_notify_shared", _SHARED)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_SHARED}")
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    return shared


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        shared = _load_shared()
        validation, args = self.validate_argument_spec(argument_spec=shared.ARGUMENT_SPEC)
        del validation
        if self._task.check_mode:
            result.update(changed=False, channels={}, failed_channels={}, msg="check mode: nothing sent")
            return result
        result.update(shared.send(args))
        return result
