#!/usr/bin/env python3
"""The backup archive's size against the tables' (what the preflight's room check estimates
from): a throwaway cluster seeded at SCALE clients, pg_dump -Fc at gzip 1 (backup_compress's
default) and uncompressed, each archive's size over the tables' heap and TOAST (pg_table_size).

    .venv/bin/python tools/archive_ratio.py [SCALE]   (default 2000; docs/benchmarks.md)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import make_cluster_tempdir, pgcluster, query  # noqa: E402

TABLES_BYTES = """SELECT sum(pg_table_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"""


def main() -> None:
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    base = make_cluster_tempdir("archive-ratio-")
    info = pgcluster.start_cluster(base / "data", password="archive-ratio")
    try:
        pgcluster.seed_database(info, "agency", scale)
        db = {**info, "dbname": "agency"}
        tables = int(query(db, TABLES_BYTES)[0][0])
        env = dict(os.environ, PGPASSWORD=info["password"])
        for level in ("1", "0"):
            archive = base / f"gzip{level}.dump"
            subprocess.run(["pg_dump", "-Fc", f"-Z{level}", "-h", info["host"], "-p", str(info["port"]),
                            "-U", info["user"], "-f", str(archive), "agency"], env=env, check=True)
            size = archive.stat().st_size
            print(f"scale {scale}: gzip {level}: tables {tables} bytes, archive {size} bytes, "
                  f"ratio {size / tables:.3f}")
    finally:
        pgcluster.destroy_cluster(base / "data")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
