#!/usr/bin/env bash
# Make sure the servers the after-the-migration tests run for real exist: Debian's prometheus
# and prometheus-pushgateway (the Prometheus tests start their own instances on free ports; the
# packages' services are not used), and cron's crontab (ansible.builtin.cron needs it to write
# the 48-hour watch's entry). apt-get update runs once, only when something is missing. Used by
# `make` (pytest) and .ci/run.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || missing+=(prometheus-pushgateway)
command -v crontab >/dev/null 2>&1 || missing+=(cron)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "ensure-prometheus: installing Debian's ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # The packages' own services are not needed: the tests start their instances on free ports.
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
