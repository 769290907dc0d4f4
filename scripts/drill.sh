#!/usr/bin/env bash
# make drill: fault drills against the real `incidentlog` binary. Each ends with every
# acknowledged event present and `incidentlog verify` passing.
#
#   scripts/drill.sh             full drills (kill -9 x20, ENOSPC, damaged copies, PostgreSQL
#                                outage, 1,200 hostile requests, fuzzing for a bounded time)
#   scripts/drill.sh --quick     the short version CI runs (a few minutes)
#   scripts/drill.sh --only kill9,hostile   a subset (kill9 enospc damage pg hostile fuzz)
#   INCIDENTLOG_PROFILE=debug scripts/drill.sh --quick   on the debug build (CI: no release build)
#
# Loopback only; every loop bounded. ENOSPC needs root (a small tmpfs); without it that drill
# is reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK="${DRILL_QUICK:-0}"
ONLY="kill9,enospc,damage,pg,hostile,fuzz"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export DRILL_QUICK="$QUICK"

if [[ ",$ONLY," == *,pg,* && -z "${INCIDENTLOG_TEST_PG:-}" && -z "${DRILL_PG_TRIED:-}" ]]; then
  export DRILL_PG_TRIED=1
  exec scripts/with-postgres.sh "$0" --only "$ONLY" $([[ "$QUICK" == 1 ]] && echo --quick)
fi

source scripts/bench-lib.sh
WORK="$(mktemp -d "${DRILL_TMP:-/tmp}/incidentlog-drill.XXXXXX")"
# Mounts made by a drill (in a subshell) are recorded in a file so the parent can undo them.
unmount_recorded() {
  kill_recorded
  [[ -f "$WORK/mounts" ]] || return 0
  local m
  while read -r m; do
    [[ -n "$m" ]] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done <"$WORK/mounts"
  : >"$WORK/mounts"
}
cleanup() {
  local rc=$?
  unmount_recorded
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "$QUICK" == 1 ]]; then
  ROUNDS="${DRILL_ROUNDS:-5}"; HOSTILE=1000; FUZZ_SECS=20; PG_LOAD=12
else
  ROUNDS="${DRILL_ROUNDS:-20}"; HOSTILE=1200; FUZZ_SECS=120; PG_LOAD=25
fi
T_START=$(date +%s)
RESULTS=()

verify_ok() {
  local out
  if ! out=$(timeout 300 "$BIN" verify "$@" 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    die "incidentlog verify $* failed"
  fi
  log "verify: $(printf '%s' "$out" | tail -n 1)"
}

check_acks() {
  timeout 300 "$LOAD" check-acks --target "$SERVER_ADDR" --token "$TOKEN" --acks "$@" >&2 || die "acknowledged events missing"
}
# Every request got an answer: the log must hold exactly the acknowledged events.
check_acks_exact() {
  timeout 300 "$LOAD" check-acks --exact --target "$SERVER_ADDR" --token "$TOKEN" --acks "$@" >&2 \
    || die "the log differs from the acknowledged events (missing, or recorded although answered with an error)"
}

# Starts the load generator in the background (pid in LOAD_PID, output in $WORK/$name.load).
start_load() {
  local name="$1"; shift
  timeout --kill-after=5 120 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" "$@" >"$WORK/$name.load" 2>&1 &
  LOAD_PID=$!
  echo "$LOAD_PID" >>"$WORK/pids"
}

status_count() { # status_count FILE CODE
  sed -n 's/^STATUS .* \('"$2"'\)=\([0-9]*\).*/\2/p' "$1" | head -n 1
}

# --------------------------------------------------------------------------------------------
drill_kill9() {
  local d="$WORK/kill9"
  mkdir -p "$d"
  TOKEN="$(make_token --data-dir "$d")" || die "token create failed"
  local r acked=0
  for r in $(seq 1 "$ROUNDS"); do
    start_server "kill9-$r" --data-dir "$d"
    start_load "kill9-$r" --connections 64 --duration-secs 30 --ack-file "$WORK/acks-kill9-$r" --stop-on-disconnect --seed "$r"
    # Kill at a random moment 0.3-2.0 s into the load.
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.3 + (r % 170) / 100 }')"
    kill9_server
    wait "$LOAD_PID" || true
    local n; n=$(wc -l <"$WORK/acks-kill9-$r")
    acked=$((acked + n))
    start_server "kill9-$r-restart" --data-dir "$d"
    check_acks "$WORK"/acks-kill9-*
    stop_server || die "graceful stop after restart failed"
    verify_ok --data-dir "$d"
    log "kill9 round $r/$ROUNDS: $n acknowledged this round, $acked in all, all present"
  done
  [[ $acked -gt 0 ]] || die "no append was ever acknowledged"
  cp -r "$d" "$WORK/kill9-copy"
  echo "kill -9 under 64-connection load: $ROUNDS rounds, $acked acknowledged events, all present, verify ok"
}

# --------------------------------------------------------------------------------------------
drill_enospc() {
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "SKIPPED (needs root for a small tmpfs)"
    return 0
  fi
  local m="$WORK/small"
  mkdir -p "$m"
  mount -t tmpfs -o size=48m tmpfs "$m" || { echo "SKIPPED (cannot mount a tmpfs)"; return 0; }
  echo "$m" >>"$WORK/mounts"
  local d="$m/data"
  mkdir -p "$d"
  TOKEN="$(make_token --data-dir "$d")" || die "token create failed"
  start_server enospc --data-dir "$d" --segment-size 4MiB
  # Some acknowledged events first, then fill the filesystem but ~256 KiB.
  timeout 120 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 8 --max-requests 500 \
    --duration-secs 30 --seed 100 --ack-file "$WORK/acks-enospc-0" >"$WORK/enospc-0.load" 2>&1 || die "first appends failed"
  local avail; avail=$(df --output=avail -B1 "$m" | tail -n 1)
  head -c $((avail - 262144)) /dev/zero >"$m/filler" 2>/dev/null || true
  timeout 120 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 16 --duration-secs 6 \
    --seed 101 --ack-file "$WORK/acks-enospc-1" >"$WORK/enospc-1.load" 2>&1 || true
  cat "$WORK/enospc-1.load" | grep -E '^STATUS' >&2 || true
  local n503; n503=$(status_count "$WORK/enospc-1.load" 503)
  [[ -n "$n503" && "$n503" -gt 0 ]] || die "no 503 while the disk was full: $(grep STATUS "$WORK/enospc-1.load")"
  if grep -E '^STATUS' "$WORK/enospc-1.load" | grep -qE ' (500|502|504)='; then
    die "other 5xx than 503 while the disk was full"
  fi
  # Reads keep working.
  [[ "$(http_status "http://$SERVER_ADDR/healthz")" == 200 ]] || die "/healthz failed on a full disk"
  [[ "$(http_status "http://$SERVER_ADDR/v1/events?after=0&limit=5")" == 200 ]] || die "GET /v1/events failed on a full disk"
  [[ "$(http_status "http://$SERVER_ADDR/v1/regions")" == 200 ]] || die "GET /v1/regions failed on a full disk"
  check_acks "$WORK"/acks-enospc-*
  # Space back: the store stays fenced until reopened (a failed write is not retried blindly).
  rm -f "$m/filler"
  local after_free
  after_free=$(timeout 60 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 1 --max-requests 1 \
    --duration-secs 10 --seed 102 --ack-file "$WORK/acks-enospc-2" 2>&1 | grep '^STATUS' || true)
  log "one append after freeing space, before restart: $after_free"
  stop_server || true
  start_server enospc-restart --data-dir "$d" --segment-size 4MiB
  timeout 120 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 8 --max-requests 200 \
    --duration-secs 30 --seed 103 --ack-file "$WORK/acks-enospc-3" >"$WORK/enospc-3.load" 2>&1 || die "appends after restart failed"
  local ok; ok=$(status_count "$WORK/enospc-3.load" 201)
  [[ "${ok:-0}" -eq 200 ]] || die "appends after restart: $(grep STATUS "$WORK/enospc-3.load")"
  check_acks_exact "$WORK"/acks-enospc-*
  stop_server || die "graceful stop failed"
  verify_ok --data-dir "$d"
  umount "$m" || true
  echo "ENOSPC: ${n503} appends answered 503 on a full disk, reads kept working, after-free-before-restart: ${after_free#STATUS }, restart recovered, nothing acknowledged lost, verify ok"
}

# --------------------------------------------------------------------------------------------
flip_byte() { # flip_byte FILE OFFSET
  python3 - "$1" "$2" <<'PY'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x40]))
PY
}

drill_damage() {
  local src="$WORK/kill9-copy"
  if [[ ! -d "$src" ]]; then
    src="$WORK/damage-src"
    mkdir -p "$src"
    TOKEN="$(make_token --data-dir "$src")" || die "token create failed"
    start_server damage-src --data-dir "$src"
    timeout 120 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 16 --max-requests 3000 \
      --duration-secs 30 >/dev/null 2>&1 || die "appends failed"
    stop_server || true
  fi
  TOKEN="$(make_token --data-dir "$src")" || die "token create failed"
  start_server damage-count --data-dir "$src"
  local orig; orig=$("$LOAD" count --target "$SERVER_ADDR" --token "$TOKEN" | awk '{print $2}')
  stop_server || true

  # 1. A flipped byte a third into the first segment: verify fails naming file and offset,
  #    serve refuses to start.
  local flip="$WORK/flip"
  cp -r "$src" "$flip"
  local seg; seg=$(find "$flip" -name '*.seg' | sort | head -n 1)
  [[ -n "$seg" ]] || die "no segment file in $flip"
  local size; size=$(stat -c %s "$seg")
  flip_byte "$seg" $((size / 3))
  local out rc=0
  out=$(timeout 120 "$BIN" verify --data-dir "$flip" 2>&1) || rc=$?
  [[ $rc -ne 0 ]] || die "verify passed on a flipped byte"
  [[ "$out" == *"$(basename "$seg")"* ]] || die "verify did not name the file: $out"
  [[ "$out" == *offset* ]] || die "verify did not name the offset: $out"
  log "verify on the flipped byte: $(printf '%s' "$out" | grep -m1 -i offset)"
  rc=0
  timeout 120 "$BIN" serve --data-dir "$flip" --listen 127.0.0.1:0 >"$WORK/flip.out" 2>"$WORK/flip.err" || rc=$?
  [[ $rc -ne 0 && $rc -ne 124 ]] || die "serve started (or hung) on a damaged log (rc $rc)"
  grep -q "$(basename "$seg")" "$WORK/flip.err" || die "serve's refusal does not name the file: $(tail -n 3 "$WORK/flip.err")"

  # 2. The last segment cut inside its last record. The log was closed cleanly, so the synced
  #    mark (log/SYNCED) names that record: acknowledged events are missing, and verify and
  #    serve refuse. Without the mark (a crash before it named the record, the only way a
  #    real crash tears a record) it is a torn tail: start cuts it (logged with file and
  #    offset); verify passes; at most the last append is gone.
  local torn="$WORK/torn"
  cp -r "$src" "$torn"
  seg=$(find "$torn" -name '*.seg' | sort | tail -n 1)
  size=$(stat -c %s "$seg")
  truncate -s $((size - 7)) "$seg"
  [[ -f "$torn/log/SYNCED" ]] || die "no synced mark in a cleanly closed log"
  rc=0
  out=$(timeout 120 "$BIN" verify --data-dir "$torn" 2>&1) || rc=$?
  [[ $rc -eq 3 && "$out" == *"acknowledged events are missing"* ]] \
    || die "verify did not refuse a cut synced record (rc $rc): $out"
  rc=0
  timeout 120 "$BIN" serve --data-dir "$torn" --listen 127.0.0.1:0 >"$WORK/torn.out" 2>"$WORK/torn.err" || rc=$?
  [[ $rc -ne 0 && $rc -ne 124 ]] || die "serve started (or hung) on a log missing synced records (rc $rc)"
  grep -q "SYNCED" "$WORK/torn.err" || die "serve's refusal does not name the mark: $(tail -n 3 "$WORK/torn.err")"
  [[ $(stat -c %s "$seg") -eq $((size - 7)) ]] || die "the refused log was changed"
  rm "$torn/log/SYNCED"
  start_server torn --data-dir "$torn"
  grep -qi "torn" "$SERVER_ERR" || die "the torn tail was not logged: $(tail -n 5 "$SERVER_ERR")"
  grep -q "$(basename "$seg")" "$SERVER_ERR" || die "the torn-tail warning does not name the file"
  grep -qi "offset" "$SERVER_ERR" || die "the torn-tail warning does not name the offset"
  local n; n=$("$LOAD" count --target "$SERVER_ADDR" --token "$TOKEN" | awk '{print $2}')
  stop_server || die "graceful stop failed"
  [[ $n -lt $orig && $n -ge $((orig - 2)) ]] || die "after the torn tail: $n events, was $orig"
  verify_ok --data-dir "$torn"

  # 3. Garbage after the last record (a torn write of a new record): cut, nothing lost.
  local junk="$WORK/junk"
  cp -r "$src" "$junk"
  seg=$(find "$junk" -name '*.seg' | sort | tail -n 1)
  head -c 100 /dev/urandom >>"$seg"
  start_server junk --data-dir "$junk"
  n=$("$LOAD" count --target "$SERVER_ADDR" --token "$TOKEN" | awk '{print $2}')
  stop_server || die "graceful stop failed"
  [[ $n -eq $orig ]] || die "after garbage at the tail: $n events, was $orig"
  verify_ok --data-dir "$junk"
  echo "damaged copies of a $orig-event log: a flipped byte fails verify and serve (file + offset named); a cut synced record fails verify and serve (the synced mark named); a torn tail is cut at start and logged (file + offset), verify ok; garbage after the tail is cut, all $n events kept, verify ok"
}

# --------------------------------------------------------------------------------------------
drill_pg() {
  if [[ -z "${INCIDENTLOG_TEST_PG:-}" || -z "${INCIDENTLOG_TEST_PG_CTL:-}" ]]; then
    # In CI the drill runs under scripts/with-postgres.sh, which sets both: not to run is a failure.
    [[ "${CI:-}" != "true" ]] || die "CI=true but no throwaway PostgreSQL (INCIDENTLOG_TEST_PG and INCIDENTLOG_TEST_PG_CTL): run under scripts/with-postgres.sh"
    echo "SKIPPED (no throwaway PostgreSQL)"
    return 0
  fi
  local pg_bin="${INCIDENTLOG_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}"
  local db="drill_$$_$RANDOM"
  local url="${INCIDENTLOG_TEST_PG%/*}/$db"
  "$pg_bin/psql" -X -q "${INCIDENTLOG_TEST_PG%/*}/postgres" -c "CREATE DATABASE $db"
  TOKEN="$(make_token --store "$url")" || die "token create --store failed"
  start_server pg --store "$url" --data-dir "$WORK/pg-unused"
  start_load pg-1 --connections 64 --duration-secs "$PG_LOAD" --ack-file "$WORK/acks-pg-1" --timeout-secs 20
  sleep 3
  log "stopping PostgreSQL under load"
  "$INCIDENTLOG_TEST_PG_CTL" stop >/dev/null
  sleep 2
  local t0 code; t0=$(now_ns)
  code=$(timeout 60 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 1 --max-requests 1 \
    --duration-secs 25 --timeout-secs 20 --seed 199 2>&1 | grep '^STATUS' || true)
  log "an append while the database is down: $code after $(secs_between "$t0" "$(now_ns)")s"
  [[ "$code" == *"503="* ]] || die "an append while the database was down did not get 503: $code"
  sleep 2
  log "starting PostgreSQL again"
  "$INCIDENTLOG_TEST_PG_CTL" start >/dev/null
  wait "$LOAD_PID" || true
  grep -E '^STATUS' "$WORK/pg-1.load" >&2 || true
  # The server recovers by itself: appends succeed again within a bounded time.
  local i ok=0
  for i in $(seq 1 30); do
    timeout 60 "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 8 --max-requests 100 \
      --duration-secs 20 --seed $((200 + i)) --ack-file "$WORK/acks-pg-2-$i" >"$WORK/pg-2.load" 2>&1 || true
    if [[ "$(status_count "$WORK/pg-2.load" 201)" == 100 ]]; then ok=1; break; fi
    sleep 1
  done
  [[ $ok == 1 ]] || die "the server did not recover after PostgreSQL came back: $(grep STATUS "$WORK/pg-2.load")"
  check_acks "$WORK"/acks-pg-*
  stop_server || true
  verify_ok --store "$url"
  echo "PostgreSQL stopped and restarted under 64-connection load: 503 while down ($(grep -o '503=[0-9]*' "$WORK/pg-1.load" || echo '503=0') in the load), recovered by itself, $(cat "$WORK"/acks-pg-* | wc -l) acknowledged events present, verify ok"
}

# --------------------------------------------------------------------------------------------
drill_hostile() {
  local d="$WORK/hostile"
  mkdir -p "$d"
  TOKEN="$(make_token --data-dir "$d")" || die "token create failed"
  timeout 120 "$BIN" import tests/fixtures/seed-incidents.ndjson --data-dir "$d" >/dev/null 2>&1 || die "seed import failed"
  start_server hostile --data-dir "$d"
  timeout 600 "$LOAD" hostile --target "$SERVER_ADDR" --token "$TOKEN" --count "$HOSTILE" --slow-clients 64 \
    --slow-secs 5 --pid "$SERVER_PID" --rss-limit-mib 512 >"$WORK/hostile.out" 2>&1 \
    || { cat "$WORK/hostile.out" >&2; die "hostile requests drill failed"; }
  grep -E '^HOSTILE|^BENCH' "$WORK/hostile.out" >&2
  kill -0 "$SERVER_PID" || die "the server died"
  stop_server || die "graceful stop after hostile requests failed"
  verify_ok --data-dir "$d"
  echo "hostile: $(grep '^HOSTILE total' "$WORK/hostile.out" | sed 's/^HOSTILE total: //'); RSS $(grep -o 'hostile_rss_after_mib=[0-9.]*' "$WORK/hostile.out" | cut -d= -f2) MiB after; verify ok"
}

# --------------------------------------------------------------------------------------------
drill_fuzz() {
  local summary=""
  if [[ "$QUICK" != 1 ]] && command -v cargo-fuzz >/dev/null 2>&1 && [[ -d fuzz ]]; then
    local t
    for t in record_decoder event_decoding; do
      log "cargo fuzz run $t for ${FUZZ_SECS}s"
      mkdir -p "fuzz/corpus/$t"
      if ! (cd fuzz && RUSTC_BOOTSTRAP=1 timeout $((FUZZ_SECS + 900)) cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
          -max_total_time="$FUZZ_SECS" -rss_limit_mb=2048 -timeout=10 >"$WORK/fuzz-$t.log" 2>&1); then
        tail -n 40 "$WORK/fuzz-$t.log" >&2
        die "cargo fuzz $t found a crash (artifact under fuzz/artifacts/$t; add it to crates/bench/fuzz-regressions/)"
      fi
      summary+="$t: $(grep -Eo 'Done [0-9]+ runs' "$WORK/fuzz-$t.log" | tail -n 1); "
    done
  fi
  log "stable fuzz fallback: the same targets over seeds + mutations, bounded"
  local flag=()
  [[ "$PROFILE" == release ]] && flag=(--release)
  FUZZ_FALLBACK_ITERS=100000000 FUZZ_FALLBACK_SECS=$(( QUICK == 1 ? 15 : 60 )) timeout 900 cargo test -q "${flag[@]}" -p incidentlog-bench --features fuzzing \
    --test fuzz_fallback -- --nocapture >"$WORK/fuzz-fallback.log" 2>&1 \
    || { tail -n 40 "$WORK/fuzz-fallback.log" >&2; die "fuzz fallback found a failure"; }
  summary+="fallback: $(grep -oE 'FUZZ [a-z_]+: [0-9]+ inputs in [0-9.]+s' "$WORK/fuzz-fallback.log" | sed 's/^FUZZ //' | tr '\n' ';')"
  echo "fuzz: $summary"
}

build_release
FAILED=0
for name in kill9 enospc damage pg hostile fuzz; do
  [[ ",$ONLY," == *,$name,* ]] || continue
  log "=== drill $name ==="
  t0=$(date +%s)
  # Each drill in a subshell: a failure ends that drill only; its processes are in $WORK/pids.
  set +e
  ( "drill_$name" ) >"$WORK/drill-$name.msg"
  rc=$?
  set -e
  msg=$(tail -n 1 "$WORK/drill-$name.msg")
  if [[ $rc -ne 0 ]]; then
    RESULTS+=("FAIL  $name ($(( $(date +%s) - t0 ))s)")
    FAILED=1
  elif [[ "$msg" == SKIPPED* ]]; then
    RESULTS+=("SKIP  $name: $msg")
  else
    RESULTS+=("PASS  $name ($(( $(date +%s) - t0 ))s): $msg")
  fi
  unmount_recorded
  kill_recorded
done
echo
echo "drill summary ($(( $(date +%s) - T_START ))s):"
printf '  %s\n' "${RESULTS[@]}"
exit "$FAILED"
