#!/usr/bin/env bash
# Runs every test of the workspace. PostgreSQL tests get a throwaway cluster from
# scripts/with-postgres.sh; with CI=true a PostgreSQL test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi
exec scripts/with-postgres.sh cargo nextest run --workspace --all-targets --no-fail-fast "$@"
