#!/usr/bin/env bash
# ansible-core at both ends of what the collection is tested with, for tests/test_ansible_versions.py:
# 2.19.1, the low end of the in-process runner's range (plugins/action/pgmigrate_direct.py); 2.19.0,
# which lacks the result hook the runner needs, and 2.18.19, outside the range (our modules then
# run as module processes, with one warning). The high end
# is the project's own venv (ansible 12, ansible-core 2.19.x). Each is a small virtualenv of its
# own (ansible-core and psycopg2-binary only) in .ansible-core/<version>/ of the project,
# gitignored; the collections (community.postgresql, community.general) come from the main
# venv's site-packages through ANSIBLE_COLLECTIONS_PATH. Wheels are kept in
# .ansible-core/wheels/, so a rebuilt venv installs offline. Idempotent; PyPI is only asked when
# a version is missing. Used by `make pytest` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${PGMIGRATE_ANSIBLE_ROOT:-$PWD/.ansible-core}"
python="${PYTHON:-python3}"
psycopg2="$(grep -E '^psycopg2-binary==' requirements.txt)"
versions=(2.19.1 2.19.0 2.18.19)

mkdir -p "$root/wheels"
for version in "${versions[@]}"; do
  dest="$root/$version"
  # The stamp is written last: a venv left half-built by an interrupted run is built again.
  if [ -f "$dest/.installed" ] && [ -x "$dest/bin/ansible-playbook" ] \
    && [ "$("$dest/bin/python" -c 'import ansible.release as r; print(r.__version__)' 2>/dev/null)" = "$version" ]; then
    continue
  fi
  echo "ensure-ansible-versions: ansible-core $version into $dest"
  rm -rf "$dest"
  # Built in place: a virtualenv's scripts name their own path and cannot be moved.
  "$python" -m venv "$dest"
  pip="$dest/bin/pip"
  if ! "$pip" install --quiet --no-index --find-links "$root/wheels" "ansible-core==$version" "$psycopg2" 2>/dev/null; then
    "$pip" download --quiet --only-binary=:all: --dest "$root/wheels" "ansible-core==$version" "$psycopg2"
    "$pip" install --quiet --no-index --find-links "$root/wheels" "ansible-core==$version" "$psycopg2"
  fi
  [ "$("$dest/bin/python" -c 'import ansible.release as r; print(r.__version__)')" = "$version" ] || {
    echo "ensure-ansible-versions: $dest does not hold ansible-core $version" >&2
    exit 1
  }
  touch "$dest/.installed"
done
