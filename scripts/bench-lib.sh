# Shared helpers of scripts/bench.sh and scripts/drill.sh (sourced, not run).
# Starts and stops the real `incidentlog` binary, creates tokens, reads resident memory.
# Every wait is bounded.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# release (default) or debug: CI's short drills reuse the debug build `make test` already made.
PROFILE="${INCIDENTLOG_PROFILE:-release}"
BIN="${INCIDENTLOG_BIN:-$ROOT/target/$PROFILE/incidentlog}"
LOAD="${INCIDENTLOG_LOAD_BIN:-$ROOT/target/$PROFILE/incidentlog-load}"
export RUST_BACKTRACE=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

now_ns() { date +%s%N; }
# Seconds between two now_ns readings, 3 decimals.
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

build_release() {
  log "building $PROFILE binaries (incidentlog, incidentlog-load)"
  local flag=()
  [[ "$PROFILE" == release ]] && flag=(--release)
  (cd "$ROOT" && cargo build "${flag[@]}" -p incidentlog -p incidentlog-bench --bins) >&2
  [[ -x "$BIN" ]] || die "no $BIN after the build"
  [[ -x "$LOAD" ]] || die "no $LOAD after the build"
}

# Resident memory of a process in MiB (one decimal), empty if gone.
rss_mib() {
  awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true
}

# make_token STORE_ARGS... : creates an admin token named bench-$RANDOM, prints the secret.
make_token() {
  local out
  out="$("$BIN" token create "$@" --name "bench-$RANDOM$RANDOM" --role admin 2>/dev/null)" || return 1
  printf '%s\n' "$out" | tail -n 1 | tr -d '[:space:]'
}

# start_server NAME STORE_ARGS... : starts `incidentlog serve` on an ephemeral loopback port,
# waits (bounded by SERVER_START_TIMEOUT, default 300 s) for `listening on http://ADDR`.
# Sets SERVER_PID, SERVER_ADDR, SERVER_OUT, SERVER_ERR, SERVER_OPEN_S (start to listening).
start_server() {
  local name="$1"; shift
  SERVER_OUT="$WORK/$name.out"
  SERVER_ERR="$WORK/$name.err"
  : >"$SERVER_OUT"
  local t0; t0="$(now_ns)"
  INCIDENTLOG_RATE_LIMIT="${INCIDENTLOG_RATE_LIMIT:-0}" \
    "$BIN" serve --listen 127.0.0.1:0 "$@" >"$SERVER_OUT" 2>"$SERVER_ERR" &
  SERVER_PID=$!
  echo "$SERVER_PID" >>"$WORK/pids"
  local deadline=$(( $(date +%s) + ${SERVER_START_TIMEOUT:-300} ))
  SERVER_ADDR=""
  while [[ $(date +%s) -lt $deadline ]]; do
    SERVER_ADDR="$(sed -n 's|.*listening on http://\([^ ]*\).*|\1|p' "$SERVER_OUT" | head -n 1)"
    [[ -n "$SERVER_ADDR" ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 20 "$SERVER_ERR" >&2 || true
      die "server $name exited before listening"
    fi
    sleep 0.05
  done
  [[ -n "$SERVER_ADDR" ]] || { kill -9 "$SERVER_PID" 2>/dev/null || true; die "server $name did not listen in time"; }
  SERVER_OPEN_S="$(secs_between "$t0" "$(now_ns)")"
  log "server $name (pid $SERVER_PID) listening on $SERVER_ADDR after ${SERVER_OPEN_S}s"
}

# stop_server: SIGTERM, bounded wait, then SIGKILL. Returns the exit status of the server.
stop_server() {
  local pid="${1:-$SERVER_PID}"
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  local i
  for i in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "server $pid did not stop in 30 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  [[ "$pid" == "${SERVER_PID:-}" ]] && SERVER_PID=""
  return $rc
}

kill9_server() {
  local pid="${1:-$SERVER_PID}"
  [[ -n "$pid" ]] || return 0
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [[ "$pid" == "${SERVER_PID:-}" ]] && SERVER_PID=""
  return 0
}

# curl against the server with the token; prints the status code.
http_status() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $TOKEN" "$@" || true
}

machine_meta() {
  echo "META cores=$(nproc)"
  echo "META memory_gib=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
  echo "META cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo | tr -s ' ')"
  echo "META kernel=$(uname -r)"
  echo "META filesystem=$(df -T "$WORK" | awk 'NR==2 { print $2 " on " $1 }')"
  echo "META date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "META git=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "META rustc=$(rustc --version 2>/dev/null | awk '{print $2}')"
}

# Kills (SIGKILL, by pid) every process this run started and recorded in $WORK/pids.
kill_recorded() {
  [[ -f "$WORK/pids" ]] || return 0
  local p
  while read -r p; do
    # Only if that pid is still one of ours (pids get reused).
    if [[ -n "$p" ]] && grep -q incidentlog "/proc/$p/cmdline" 2>/dev/null; then
      kill -9 "$p" 2>/dev/null || true
    fi
  done <"$WORK/pids"
  : >"$WORK/pids"
}
