#!/usr/bin/env bash
# incidentlog demo: builds the release binary, starts the server on the embedded file store in a
# throwaway directory on a free port, imports the seed incidents over HTTP with curl, prints the
# regional summaries and one disputed claim (the Kherson drone claim), then stops the server
# (SIGTERM, graceful) and removes everything it created.
#
# Needs: cargo, curl; jq if present (else python3 -m json.tool).
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=tests/fixtures/seed-incidents.ndjson
KHERSON_DRONE=5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a03

for tool in cargo curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "demo: $tool is required" >&2; exit 1; }
done
if command -v jq >/dev/null 2>&1; then
  pretty() { jq .; }
  each_region() { jq -c '.regions[]'; }
  claim_only() { jq '{incident_id, kind, region, region_name, occurred_at, summary, status, claims}'; }
else
  pretty() { python3 -m json.tool --indent 2; }
  each_region() {
    python3 -c 'import json, sys
for r in json.load(sys.stdin)["regions"]:
    print(json.dumps(r, separators=(",", ":"), ensure_ascii=False))'
  }
  claim_only() {
    python3 -c 'import json, sys
v = json.load(sys.stdin)
keys = ["incident_id", "kind", "region", "region_name", "occurred_at", "summary", "status", "claims"]
print(json.dumps({k: v.get(k) for k in keys}, indent=2, ensure_ascii=False))'
  }
fi

echo "==> building incidentlog (release; the first build takes a few minutes)"
cargo build --release --quiet -p incidentlog
BIN="${CARGO_TARGET_DIR:-target}/release/incidentlog"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/incidentlog-demo.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "==> starting the server on the embedded store in $WORK/data"
RUST_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 \
  >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!

# Wait for the `listening on http://ADDR` line (port 0: the OS picked a free port).
URL=""
for _ in $(seq 1 600); do
  URL="$(grep -o -m1 'listening on http://[^ ]*' "$WORK/server.out" 2>/dev/null | sed 's/^listening on //' || true)"
  [[ -n "$URL" ]] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "demo: the server exited early:" >&2
    cat "$WORK/server.err" >&2
    exit 1
  fi
  sleep 0.1
done
[[ -n "$URL" ]] || { echo "demo: the server did not start within 60 s" >&2; cat "$WORK/server.err" >&2; exit 1; }
TOKEN="$(sed -n 's/^admin token: //p' "$WORK/server.out" | head -n1)"
[[ -n "$TOKEN" ]] || { echo "demo: no first-start admin token printed" >&2; exit 1; }
ready=""
for _ in $(seq 1 600); do
  if curl -fsS "$URL/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[[ -n "$ready" ]] || { echo "demo: /readyz never answered 200" >&2; exit 1; }
echo "    listening on $URL; first-start admin token captured (${TOKEN:0:7}...)"

AUTH="Authorization: Bearer $TOKEN"

echo
echo "==> POST $URL/v1/events  (bulk import of $SEED)"
curl -sS -H "$AUTH" -H 'Content-Type: application/x-ndjson' \
  --data-binary "@$SEED" "$URL/v1/events" | pretty

echo
echo "==> GET $URL/v1/regions  (regional summaries, one region per line)"
curl -sS -H "$AUTH" "$URL/v1/regions" | each_region

echo
echo "==> GET $URL/v1/incidents/$KHERSON_DRONE  (a disputed claim)"
curl -sS -H "$AUTH" "$URL/v1/incidents/$KHERSON_DRONE" | claim_only

echo
echo "==> stopping the server (SIGTERM)"
kill -TERM "$SERVER_PID"
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=""
echo "    exit status $status"
exit "$status"
