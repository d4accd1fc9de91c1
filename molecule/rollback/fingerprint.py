#!/usr/bin/env python3
"""Write a fingerprint of a scenario database as JSON: the catalog and every table's content by
hash (tests/helpers.db_snapshot), phase 3's content without surrogate ids and insertion times,
and the ledger's history. Usage: fingerprint.py CLUSTER_JSON OUT_JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path.insert(0, str(TESTS))

from helpers import db_snapshot, query  # noqa: E402
from rollback_helpers import phase3_content  # noqa: E402


def main() -> None:
    cluster = json.loads(Path(sys.argv[1]).read_text())
    db = {k: cluster[k] for k in ("host", "port", "user", "password", "dbname")}
    migrated = query(db, "SELECT to_regclass('orchestration_workflows') IS NOT NULL")[0][0]
    fingerprint = {
        "snapshot": db_snapshot(db),
        "phase3": phase3_content(db) if migrated else None,
        # overrides holding anything phase 3 writes (none before phase 3, none after its rollback)
        "overrides_touched": query(db, "SELECT count(*) FROM client_app_overrides WHERE marketplace_module_id "
                                       "IS NOT NULL OR installation_id IS NOT NULL OR activation_status <> 'pending'"
                                   )[0][0] if migrated else None,
        "ledger": query(db, "SELECT phase, direction, status, details->>'scope' FROM migration_ledger.history "
                            "ORDER BY id") if query(db, "SELECT to_regclass('migration_ledger.history') "
                                                        "IS NOT NULL")[0][0] else [],
    }
    Path(sys.argv[2]).write_text(json.dumps(fingerprint, default=str, indent=1))


if __name__ == "__main__":
    main()
