#!/usr/bin/env bash
# Make sure Supabase's database linter exists for tests/test_supabase.py: the npm registry's
# @postgres-language-server/cli (its `dblint` runs Supabase's splinter rules against a live
# database), pinned, installed into .tools/dblint/ of the project (gitignored), never globally.
# npm installs the platform's binary package beside it; Debian's npm is installed where missing.
# Used by `make` (pytest) and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.25.5
prefix=.tools/dblint
bin="$prefix/node_modules/.bin/postgres-language-server"

if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1)" = "$version" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "ensure-dblint: installing Debian's nodejs and npm"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends nodejs npm
fi
echo "ensure-dblint: installing @postgres-language-server/cli $version into $prefix"
mkdir -p "$prefix"
npm install --silent --no-audit --no-fund --prefix "$prefix" "@postgres-language-server/cli@$version"
"$bin" --version
