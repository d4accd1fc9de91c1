#!/usr/bin/env bash
# Make sure PostgreSQL's server and client binaries exist (initdb, pg_ctl, psql, pg_dump,
# pg_restore); install Debian's postgresql where they are missing. A plain Debian install keeps
# the server binaries in /usr/lib/postgresql/<version>/bin, off PATH: tools/pgcluster.py finds
# them there. Also Debian's pgbouncer, which the pooler tests (tests/test_poolers.py) start, and
# Debian's pg_cron for each server version installed (postgresql-<major>-cron, 1.4 on bookworm),
# which the drain's pg_cron test preloads (tests/test_drain.py).
# Used by `make` and .ci/run.
set -euo pipefail

have_server() {
  { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
have_client() {
  command -v psql >/dev/null 2>&1 && command -v pg_dump >/dev/null 2>&1 && command -v pg_restore >/dev/null 2>&1
}

have_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
}

missing=()
{ have_server && have_client; } || missing+=(postgresql postgresql-client)
have_pgbouncer || missing+=(pgbouncer)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ensure-postgres: installing Debian's ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

# pg_cron, where Debian packages it for the installed server; a version without a package is
# skipped (the pg_cron test then says what is missing), not an error.
cron_missing=()
for dir in /usr/lib/postgresql/*/; do
  major=$(basename "$dir")
  [ -f "${dir}lib/pg_cron.so" ] || cron_missing+=("postgresql-${major}-cron")
done
if [ "${#cron_missing[@]}" -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  for pkg in "${cron_missing[@]}"; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then
      echo "ensure-postgres: installing Debian's $pkg"
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$pkg"
    else
      echo "ensure-postgres: no Debian package $pkg; the pg_cron test will be skipped" >&2
    fi
  done
fi

# initdb refuses to run as root; tools/pgcluster.py then runs it as the postgres OS user.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
