#!/usr/bin/env bash
# Runs every test of the workspace. PostgreSQL tests get a throwaway cluster from
# scripts/with-postgres.sh; with CI=true a PostgreSQL test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi
# A fresh machine may lack the PostgreSQL server; install it when we can (root, registries reachable).
PG_BIN="${INCIDENTLOG_PG_BIN:-/usr/lib/postgresql/15/bin}"
if [[ ! -x "$PG_BIN/initdb" && "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server not found in $PG_BIN; installing postgresql-15" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2 || true
fi
# Then the short fault drills against the real binary (the full set is `make drill`); they reuse
# the debug build and the same throwaway PostgreSQL.
exec scripts/with-postgres.sh bash -c \
  'cargo nextest run --workspace --no-fail-fast "$@" && INCIDENTLOG_PROFILE=debug scripts/drill.sh --quick' _ "$@"
