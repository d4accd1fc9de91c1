# The lock-safety options of every database module (LOCK_ARGS in
# plugins/module_utils/pgmigrate.py): documented once, here.
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  lock_timeout_ms:
    description:
      - C(lock_timeout) of every lock-taking statement, in milliseconds (C(migration_lock_timeout_ms)).
        A statement that cannot get its lock this fast gives up, so the application's queries never
        queue behind it, and is retried after a backoff.
    type: int
    default: 50
  lock_attempts:
    description: >-
      How many times a statement that timed out on its lock (or deadlocked) is tried before the
      module fails.
    type: int
    default: 60
  backoff_initial_ms:
    description: >-
      The first pause between two attempts, in milliseconds; it doubles (with jitter) up to
      I(backoff_max_ms).
    type: int
    default: 100
  backoff_max_ms:
    description: The longest pause between two attempts, in milliseconds.
    type: int
    default: 5000
  statement_timeout_ms:
    description: C(statement_timeout) of the migration's statements, in milliseconds; C(0) means none.
    type: int
    default: 0
  autovacuum_wait_s:
    description:
      - How long, in seconds, a statement may wait for an autovacuum worker that this login may not
        cancel; such waits do not use up I(lock_attempts).
    type: int
    default: 1800
"""
