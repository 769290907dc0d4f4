#!/usr/bin/env bash
# make bench: every benchmark of incidentlog side by side with its peer, in one run, on this
# machine; writes BENCHMARKS.md (figures, peers, ratios, targets, machine).
#
#   scripts/bench.sh            full run (about 10-15 minutes)
#   scripts/bench.sh --quick    or BENCH_QUICK=1: smaller log, shorter loops (about 3 minutes)
#   scripts/bench.sh --scaling  open/replay/memory/query figures at 100k, 1M, 10M events
#                               (BENCH_SCALING_SIZES="100000 1000000" to choose) + the SVG plot
#
# Loopback only; every loop is bounded in count and time. A throwaway PostgreSQL comes from
# scripts/with-postgres.sh (fsync and synchronous_commit on).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=main
QUICK="${BENCH_QUICK:-0}"
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --scaling) MODE=scaling ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
export BENCH_QUICK="$QUICK"
# Ours answers after fsync, whatever the caller's environment says.
export INCIDENTLOG_DURABILITY=strict

# Run ourselves under a throwaway PostgreSQL (once).
if [[ -z "${INCIDENTLOG_TEST_PG:-}" && -z "${BENCH_PG_TRIED:-}" ]]; then
  export BENCH_PG_TRIED=1
  exec scripts/with-postgres.sh "$0" "$@"
fi

source scripts/bench-lib.sh
COMMAND="scripts/bench.sh $*"
WORK="$(mktemp -d "${BENCH_TMP:-/tmp}/incidentlog-bench.XXXXXX")"
RES="$WORK/results.txt"
SERVER_PID=""
cleanup() {
  local rc=$?
  kill_recorded
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T_START=$(date +%s)
record() { echo "$*" >>"$RES"; }
# Runs a command (bounded by `timeout`), shows its output, keeps its BENCH/STATUS lines.
run_bench() {
  local limit="$1"; shift
  local out="$WORK/cmd.out"
  if ! timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$WORK/cmd.err"; then
    cat "$out" "$WORK/cmd.err" >&2
    log "command failed or timed out: $*"
    grep -E '^(BENCH|STATUS) ' "$out" >>"$RES" || true
    return 1
  fi
  cat "$out"
  grep -E '^(BENCH|STATUS) ' "$out" >>"$RES" || true
}
# median_round NAME METRIC: of the rounds NAME_r1.., the one with the median METRIC; its
# BENCH and STATUS lines are recorded again under NAME (what the report reads).
median_round() {
  local name="$1" metric="$2" k
  k=$(awk -v n="$name" -v m="$metric" '$1 == "BENCH" { split($2, kv, "=")
        if (kv[1] ~ ("^" n "_r[0-9]+_" m "$")) { r = kv[1]; sub("^" n "_r", "", r); sub("_" m "$", "", r); print kv[2] + 0, r } }' "$RES" \
      | sort -n | awk '{ v[NR] = $2 } END { if (NR) print v[int((NR + 1) / 2)] }')
  [[ -n "$k" ]] || return 0
  grep -E "^(BENCH|STATUS) ${name}_r${k}[_ ]" "$RES" | sed -E "s/^(BENCH|STATUS) ${name}_r${k}/\\1 ${name}/" >>"$RES.median"
  cat "$RES.median" >>"$RES"
  rm -f "$RES.median"
  log "$name: median of $ROUNDS rounds is round $k"
}
bench_value() { awk -v k="$1" '$1 == "BENCH" { split($2, kv, "="); if (kv[1] == k) v = kv[2] } END { print v }' "$RES"; }

QUICK_ARG=()
if [[ "$QUICK" == 1 ]]; then
  QUICK_ARG=(--quick)
  export INCIDENTLOG_BENCH_QUICK=1
  N_BIG="${BENCH_EVENTS:-100000}"; DUR=4; PGB_T=4; Q_DUR=3; ROUNDS=1
else
  N_BIG="${BENCH_EVENTS:-1000000}"; DUR=10; PGB_T=10; Q_DUR=10; ROUNDS=3
fi

PG_URL="${INCIDENTLOG_TEST_PG:-}"
PG_BIN="${INCIDENTLOG_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}"
pg_url_db() { printf '%s\n' "${PG_URL%/*}/$1"; }
psql_db() { local db="$1"; shift; "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$(pg_url_db "$db")" "$@"; }

build_release
machine_meta >"$RES"
record "META mode=$MODE quick=$QUICK events=$N_BIG"
record "META command=$COMMAND"
log "measuring the disk's own sync rate (one ~300-byte write + fdatasync per op)"
run_bench 60 "$LOAD" fsync --dir "$WORK" --seconds 3

# ---------------------------------------------------------------------------------------------
main_run() {
  # Store and projections benches (their own BENCH lines), each bounded.
  if [[ -f crates/store/benches/store.rs ]]; then
    log "store bench (cargo bench -p incidentlog-store --bench store)"
    run_bench 600 cargo bench -q -p incidentlog-store --bench store -- "${QUICK_ARG[@]}" || record "MISSING store bench failed"
  else
    record "MISSING crates/store/benches/store.rs"
  fi
  if [[ -f crates/projections/benches/fold.rs ]]; then
    log "fold bench (cargo bench -p incidentlog-projections --bench fold)"
    run_bench 600 cargo bench -q -p incidentlog-projections --bench fold -- "${QUICK_ARG[@]}" || record "MISSING fold bench failed"
  else
    record "MISSING crates/projections/benches/fold.rs"
  fi
  if [[ -f crates/store/benches/pg.rs && -n "$PG_URL" ]]; then
    log "PostgreSQL store bench (cargo bench -p incidentlog-store --bench pg)"
    run_bench 600 cargo bench -q -p incidentlog-store --bench pg -- "${QUICK_ARG[@]}" || record "MISSING pg store bench failed"
  fi

  log "generating a synthetic log of $N_BIG events (+ the same rows for COPY)"
  run_bench 900 "$LOAD" gen --events "$N_BIG" --out "$WORK/big.ndjson" --copy-out "$WORK/big.copy" --seed 7
  local n_rows; n_rows=$(wc -l <"$WORK/big.copy")
  "$LOAD" pgbench-script --out "$WORK/insert.sql" --ddl-out "$WORK/ddl.sql" --seed 11

  local have_pg=0
  if [[ -n "$PG_URL" ]]; then
    have_pg=1
    "$PG_BIN/psql" -X -q "$(pg_url_db postgres)" -c "CREATE DATABASE peer" -c "CREATE DATABASE store_http"
    psql_db peer -f "$WORK/ddl.sql"
    psql_db peer -c "SHOW synchronous_commit" -tA | sed 's/^/META pg_synchronous_commit=/' >>"$RES"
  else
    record "MISSING PostgreSQL (no throwaway cluster): PostgreSQL peers skipped"
  fi

  # Single-event appends over HTTP at 64 connections, file store, against pgbench inserts of
  # the same row at 64 clients (synchronous_commit=on): $ROUNDS alternating rounds, each
  # side's median round reported (on a shared machine one round each, minutes apart, can be
  # 15% off either way). Each round has its own --seed: the same seed would repeat the ids
  # of round 1, and idempotent repeats (200) are not appends (the generator counts only 201).
  local d="$WORK/append-file"
  mkdir -p "$d"
  TOKEN="$(make_token --data-dir "$d")" || die "token create failed"
  start_server append-file --data-dir "$d"
  local r
  for r in $(seq 1 "$ROUNDS"); do
    if [[ $have_pg == 1 ]]; then
      log "round $r/$ROUNDS: pgbench single-row inserts of the event row, 64 clients, ${PGB_T}s"
      timeout 300 "$PG_BIN/pgbench" -n -M prepared -c 64 -j 2 -T "$PGB_T" -f "$WORK/insert.sql" "$(pg_url_db peer)" >"$WORK/pgbench.out" 2>&1 \
        || { cat "$WORK/pgbench.out" >&2; die "pgbench failed"; }
      local tps; tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/pgbench.out" | tail -n 1)
      record "BENCH pg_insert_c64_r${r}_rows_per_sec=${tps%.*} rows/s"
      log "pgbench: $tps rows/s"
    fi
    log "round $r/$ROUNDS: HTTP single-event appends, file store, 64 connections, ${DUR}s"
    run_bench $((DUR + 120)) "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 64 \
      --duration-secs "$DUR" --seed "$r" --name "http_append_file_c64_r${r}" || true
  done
  stop_server || true
  rm -rf "$d"
  median_round pg_insert_c64 rows_per_sec
  median_round http_append_file_c64 events_per_sec

  # The same on the PostgreSQL store.
  if [[ $have_pg == 1 ]]; then
    local url; url="$(pg_url_db store_http)"
    if TOKEN="$(make_token --store "$url")" && [[ -n "$TOKEN" ]]; then
      start_server append-pg --store "$url" --data-dir "$WORK/pg-unused"
      log "HTTP single-event appends, PostgreSQL store, 64 connections, ${DUR}s"
      run_bench $((DUR + 120)) "$LOAD" append --target "$SERVER_ADDR" --token "$TOKEN" --connections 64 \
        --duration-secs "$DUR" --name http_append_pg_c64 || true
      stop_server || true
    else
      record "MISSING PostgreSQL store: token create --store failed"
    fi

  fi

  # Bulk import with the CLI vs PostgreSQL COPY FROM of the same rows: $ROUNDS alternating
  # rounds, each side's median round reported (one run each, minutes apart, swung the ratio
  # by 3.2-4.6x). The last COPY FROM leaves the rows for COPY TO below; the last import's log
  # takes the repeated import.
  local d2="$WORK/import-cli" t0 t1 r
  for r in $(seq 1 "$ROUNDS"); do
    if [[ $have_pg == 1 ]]; then
      log "round $r/$ROUNDS: PostgreSQL COPY FROM STDIN of $n_rows rows"
      psql_db peer -c "TRUNCATE events"
      t0=$(now_ns)
      psql_db peer -c "\\copy events (incident_id, stream_version, event_id, event_type, data, recorded_by) FROM '$WORK/big.copy'"
      t1=$(now_ns)
      record "BENCH pg_copy_from_r${r}_rows_per_sec=$(awk -v n="$n_rows" -v s="$(secs_between "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }') rows/s"
    fi
    log "round $r/$ROUNDS: incidentlog import of $N_BIG events"
    rm -rf "$d2"
    mkdir -p "$d2"
    t0=$(now_ns)
    timeout 900 "$BIN" import "$WORK/big.ndjson" --data-dir "$d2" >"$WORK/cli-import.out" 2>"$WORK/cli-import.err" \
      || { tail -n 20 "$WORK/cli-import.err" >&2; die "incidentlog import failed"; }
    t1=$(now_ns)
    record "BENCH cli_import_r${r}_events_per_sec=$(awk -v n="$n_rows" -v s="$(secs_between "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }') events/s"
  done
  median_round pg_copy_from rows_per_sec
  median_round cli_import events_per_sec
  # The same file again into the same log: the idempotent retry of a whole import (every line
  # a repeat, answered as duplicates, nothing written). Not a target; a figure users meet.
  log "incidentlog import of the same $N_BIG events again (all repeats)"
  t0=$(now_ns)
  timeout 900 "$BIN" import "$WORK/big.ndjson" --data-dir "$d2" >"$WORK/cli-reimport.out" 2>"$WORK/cli-reimport.err" \
    || { tail -n 20 "$WORK/cli-reimport.err" >&2; die "incidentlog import (again) failed"; }
  t1=$(now_ns)
  grep -q '"appended": 0' "$WORK/cli-reimport.out" || die "the repeated import wrote events: $(head -c 300 "$WORK/cli-reimport.out")"
  record "BENCH cli_reimport_events_per_sec=$(awk -v n="$n_rows" -v s="$(secs_between "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }') events/s"
  rm -rf "$d2"

  # Bulk import over HTTP, then queries on that log.
  d="$WORK/import-http"
  mkdir -p "$d"
  TOKEN="$(make_token --data-dir "$d")" || die "token create failed"
  start_server import-http --data-dir "$d"
  log "bulk import of $N_BIG events over POST /v1/events"
  run_bench 900 "$LOAD" import --target "$SERVER_ADDR" --token "$TOKEN" --file "$WORK/big.ndjson" --name http_import
  record "BENCH server_rss_after_import_mib=$(rss_mib "$SERVER_PID") MiB"
  queries "$N_BIG" c64
  stop_server || true
  # Open (recover + rebuild views) the same log.
  start_server reopen --data-dir "$d"
  record "BENCH server_open_s=$SERVER_OPEN_S s"
  sleep 1
  record "BENCH server_rss_after_open_mib=$(rss_mib "$SERVER_PID") MiB"
  stop_server || true

  # Replay vs COPY TO STDOUT of the same rows: each warmed once, then $ROUNDS alternating
  # rounds, each side's median round reported (one run each swings by 20-30% here).
  log "incidentlog replay vs PostgreSQL COPY TO STDOUT ($ROUNDS alternating rounds)"
  timeout 600 "$BIN" replay --data-dir "$d" >/dev/null 2>&1 || true
  if [[ $have_pg == 1 ]]; then
    psql_db peer -c "TRUNCATE events"
    psql_db peer -c "\\copy events (incident_id, stream_version, event_id, event_type, data, recorded_by) FROM '$WORK/big.copy'"
    psql_db peer -c "COPY events TO STDOUT" >/dev/null
  fi
  for r in $(seq 1 "$ROUNDS"); do
    t0=$(now_ns)
    timeout 600 "$BIN" replay --data-dir "$d" >"$WORK/replay.out" 2>"$WORK/replay.err" \
      || { tail -n 20 "$WORK/replay.err" >&2; die "incidentlog replay failed"; }
    t1=$(now_ns)
    record "BENCH replay_r${r}_s=$(secs_between "$t0" "$t1") s"
    record "BENCH replay_r${r}_events_per_sec=$(awk -v n="$n_rows" -v s="$(secs_between "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }') events/s"
    if [[ $have_pg == 1 ]]; then
      t0=$(now_ns)
      psql_db peer -c "COPY events TO STDOUT" >/dev/null
      t1=$(now_ns)
      record "BENCH pg_copy_to_r${r}_rows_per_sec=$(awk -v n="$n_rows" -v s="$(secs_between "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }') rows/s"
    fi
  done
  median_round replay events_per_sec
  if [[ $have_pg == 1 ]]; then
    median_round pg_copy_to rows_per_sec
  fi
  rm -rf "$d"
}

# queries N TAG: summary latencies on the running server's log of N events.
queries() {
  local n="$1" tag="$2"
  local conns=64
  [[ "$tag" == c64 ]] || conns=8
  if [[ "$tag" == c64 ]]; then
    # The target figure: $ROUNDS rounds, the median round's p99 reported (as for appends).
    local r
    for r in $(seq 1 "$ROUNDS"); do
      log "GET /v1/regions/{code} at $conns connections, ${Q_DUR}s (round $r/$ROUNDS)"
      run_bench $((Q_DUR + 120)) "$LOAD" get --target "$SERVER_ADDR" --token "$TOKEN" --connections "$conns" \
        --duration-secs "$Q_DUR" --path '/v1/regions/{region}' --name "region_${tag}_r${r}" || true
    done
    median_round "region_${tag}" p99_ms
  else
    log "GET /v1/regions/{code} at $conns connections, ${Q_DUR}s"
    run_bench $((Q_DUR + 120)) "$LOAD" get --target "$SERVER_ADDR" --token "$TOKEN" --connections "$conns" \
      --duration-secs "$Q_DUR" --path '/v1/regions/{region}' --name "region_${tag}" || true
  fi
  log "GET /v1/regions/{code}?from=..&to=.. (window)"
  run_bench $((Q_DUR + 120)) "$LOAD" get --target "$SERVER_ADDR" --token "$TOKEN" --connections 8 \
    --duration-secs "$Q_DUR" --path '/v1/regions/{region}?from=2025-01-01&to=2025-06-30' --name "region_window_${tag}" || true
  log "as-of summaries (at_position and as_of) on the $n-event log"
  local half=$(( n / 2 ))
  local asof
  asof=$(curl -s --max-time 10 -H "Authorization: Bearer $TOKEN" "http://$SERVER_ADDR/v1/events?after=$((half - 1))&limit=1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"][0]["recorded_at"])' 2>/dev/null || true)
  run_bench $((Q_DUR + 120)) "$LOAD" get --target "$SERVER_ADDR" --token "$TOKEN" --connections 1 \
    --duration-secs "$Q_DUR" --max-requests 2000 --path "/v1/regions/{region}?at_position=$half" --name "asof_position_${tag}" || true
  if [[ -n "$asof" ]]; then
    asof=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$asof")
    run_bench $((Q_DUR + 120)) "$LOAD" get --target "$SERVER_ADDR" --token "$TOKEN" --connections 1 \
      --duration-secs "$Q_DUR" --max-requests 2000 --path "/v1/regions/{region}?as_of=$asof" --name "asof_time_${tag}" || true
  fi
  run_bench $((Q_DUR + 120)) "$LOAD" get --target "$SERVER_ADDR" --token "$TOKEN" --connections 1 \
    --duration-secs "$Q_DUR" --max-requests 500 --path "/v1/regions" --name "regions_all_${tag}" || true
}

# ---------------------------------------------------------------------------------------------
scaling_run() {
  local sizes="${BENCH_SCALING_SIZES:-100000 1000000 10000000}"
  [[ "$QUICK" == 1 ]] && sizes="${BENCH_SCALING_SIZES:-20000 100000}"
  Q_DUR=3
  for n in $sizes; do
    log "scaling: $n events"
    run_bench 3600 "$LOAD" gen --events "$n" --out "$WORK/s.ndjson" --seed 7 >/dev/null
    local d="$WORK/s-$n"
    mkdir -p "$d"
    local t0 t1; t0=$(now_ns)
    timeout 3600 "$BIN" import "$WORK/s.ndjson" --data-dir "$d" >/dev/null 2>"$WORK/s-import.err" \
      || { tail -n 20 "$WORK/s-import.err" >&2; die "import of $n events failed"; }
    t1=$(now_ns)
    rm -f "$WORK/s.ndjson"
    record "BENCH scale_import_s_$n=$(secs_between "$t0" "$t1") s"
    record "BENCH scale_log_bytes_$n=$(du -sb "$d" | awk '{print $1}') bytes"
    t0=$(now_ns)
    timeout 3600 "$BIN" replay --data-dir "$d" >/dev/null 2>&1 || die "replay of $n events failed"
    t1=$(now_ns)
    record "BENCH scale_replay_s_$n=$(secs_between "$t0" "$t1") s"
    t0=$(now_ns)
    timeout 3600 "$BIN" verify --data-dir "$d" >/dev/null 2>&1 || die "verify of $n events failed"
    t1=$(now_ns)
    record "BENCH scale_verify_s_$n=$(secs_between "$t0" "$t1") s"
    TOKEN="$(make_token --data-dir "$d")" || die "token create failed"
    SERVER_START_TIMEOUT=3600 start_server "scale-$n" --data-dir "$d"
    record "BENCH scale_open_s_$n=$SERVER_OPEN_S s"
    sleep 1
    record "BENCH scale_rss_mib_$n=$(rss_mib "$SERVER_PID") MiB"
    queries "$n" "$n"
    stop_server || true
    rm -rf "$d"
  done
}

if [[ "$MODE" == scaling ]]; then
  scaling_run
  OUT=crates/bench/results/scaling.txt
else
  main_run
  OUT=crates/bench/results/bench.txt
fi
record "META duration_s=$(( $(date +%s) - T_START ))"
mkdir -p crates/bench/results
cp "$RES" "$OUT"
python3 crates/bench/report.py --bench crates/bench/results/bench.txt --scaling crates/bench/results/scaling.txt \
  --out BENCHMARKS.md --svg proto-docs/scaling.svg
log "wrote $OUT and BENCHMARKS.md in $(( $(date +%s) - T_START ))s"
