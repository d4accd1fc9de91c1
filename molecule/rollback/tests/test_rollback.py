"""The rollback story of the scenario, from its fingerprints: a full rollback restores the
catalog (roles included) and every table's content; a data rollback followed by the migration
again reproduces the first run; the ledger tells it all."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
from rollback_helpers import fidelity_diff


def snapshot(fp: dict[str, Any]) -> dict[str, Any]:
    # JSON turned the (count, md5) tuples of the data section into lists on both sides.
    return fp["snapshot"]


def test_full_rollback_restores_everything(fingerprints: dict[str, Any]) -> None:
    """After -e phase=all rollback: the same tables, columns, defaults, indexes, constraints,
    views, policies, RLS flags, grants, roles and functions as before the migration, and the
    same content in every table, by hash - the ledger and the backup tables aside."""
    assert fidelity_diff(snapshot(fingerprints["pre"]), snapshot(fingerprints["rolled_back"])) == []
    assert "authenticated" not in snapshot(fingerprints["pre"])["roles"]
    assert "authenticated" in snapshot(fingerprints["forward1"])["roles"]


def test_full_rollback_is_recorded(fingerprints: dict[str, Any]) -> None:
    ledger = fingerprints["rolled_back"]["ledger"]
    rolled = [row[0] for row in ledger if row[1] == "rollback" and row[2] == "succeeded"]
    assert rolled == ["6", "5", "4", "3", "2", "1"]
    assert {row[3] for row in ledger if row[1] == "rollback"} == {"all"}


def test_data_rollback_keeps_the_schema_and_removes_the_data(fingerprints: dict[str, Any]) -> None:
    after = snapshot(fingerprints["data_rolled_back"])
    assert after["data"]["public.orchestration_workflows"][0] == 0
    assert after["data"]["public.handover_packages"][0] == 0
    assert after["data"]["public.integration_events"][0] == 0
    assert "public.unified_client_dashboard" in after["views"]
    assert fingerprints["data_rolled_back"]["overrides_touched"] == 0
    assert fingerprints["forward1"]["overrides_touched"] > 0
    phase3 = fingerprints["data_rolled_back"]["phase3"]
    assert phase3["workflows"][0][0] == 0 and phase3["recorded"] == []
    last = fingerprints["data_rolled_back"]["ledger"][-1]
    assert last[:2] == ["3", "rollback"] and last[3] == "data"


def test_forward_again_reproduces_the_first_run(fingerprints: dict[str, Any]) -> None:
    """What phase 3 populated (every override's linkage; workflows, packages and events by
    content) is the same after the data rollback and the rerun as after the first run."""
    assert fingerprints["forward2"]["phase3"] == fingerprints["forward1"]["phase3"]


def test_ledger_ends_with_every_phase_applied(db: psycopg2.extensions.connection) -> None:
    with db.cursor() as cur:
        cur.execute("""SELECT phase FROM (SELECT DISTINCT ON (phase) phase, direction FROM migration_ledger.history
                                           WHERE status = 'succeeded' ORDER BY phase, id DESC) s
                        WHERE direction = 'apply' AND phase ~ '^[1-6]$' ORDER BY 1""")
        assert [r[0] for r in cur.fetchall()] == ["1", "2", "3", "4", "5", "6"]
        cur.execute("SELECT count(*) FROM migration_ledger.history WHERE status <> 'succeeded'")
        assert cur.fetchone()[0] == 0
