#!/usr/bin/env bash
# Runs every test of the workspace. PostgreSQL tests get a throwaway cluster from
# scripts/with-postgres.sh; with CI=true a PostgreSQL test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi
# A fresh machine may lack the PostgreSQL server, and libfaketime (a test runs one server with
# its clock an hour behind); install them when we can (root, registries reachable).
PG_BIN="${INCIDENTLOG_PG_BIN:-/usr/lib/postgresql/15/bin}"
missing=()
[[ -x "$PG_BIN/initdb" ]] || missing+=(postgresql-15)
compgen -G '/usr/lib/*-linux-gnu/faketime/libfaketime.so.1' >/dev/null || missing+=(faketime)
if [[ ${#missing[@]} -gt 0 && "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} for the tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || true
fi
# Then the short fault drills against the real binary (the full set is `make drill`); they reuse
# the debug build and the same throwaway PostgreSQL.
exec scripts/with-postgres.sh bash -c \
  'cargo nextest run --workspace --no-fail-fast "$@" && INCIDENTLOG_PROFILE=debug scripts/drill.sh --quick' _ "$@"
