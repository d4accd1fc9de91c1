#!/usr/bin/env bash
# Make sure PostgreSQL's server and client binaries exist (initdb, pg_ctl, psql, pg_dump,
# pg_restore); install Debian's postgresql where they are missing. A plain Debian install keeps
# the server binaries in /usr/lib/postgresql/<version>/bin, off PATH: tools/pgcluster.py finds
# them there. Also Debian's pgbouncer, which the pooler tests (tests/test_poolers.py) start.
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

# initdb refuses to run as root; tools/pgcluster.py then runs it as the postgres OS user.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
