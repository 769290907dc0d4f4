#!/usr/bin/env bash
# with-postgres.sh CMD...: runs CMD with a throwaway PostgreSQL cluster.
#
# Starts a fresh PostgreSQL cluster (initdb + pg_ctl) in a temp dir on a free port, creates a
# database, exports
#   INCIDENTLOG_TEST_PG       postgres://postgres@127.0.0.1:PORT/incidentlog
#   INCIDENTLOG_TEST_PG_BIN   the PostgreSQL bin dir (pgbench, psql, ...)
#   INCIDENTLOG_TEST_PG_DATA  the cluster's data dir
#   INCIDENTLOG_TEST_PG_CTL   a command taking `stop` or `start` (the failure test uses it)
# runs CMD, and always stops and removes the cluster, whatever CMD does.
#
# Binaries come from $INCIDENTLOG_PG_BIN (default /usr/lib/postgresql/15/bin). When they are
# missing: with CI=true this fails; otherwise it warns loudly and runs CMD without the
# variables (PostgreSQL tests then skip with a loud message).
# When INCIDENTLOG_TEST_PG is already set, CMD runs against that database as is.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

if [[ -n "${INCIDENTLOG_TEST_PG:-}" ]]; then
  echo "with-postgres: using the existing INCIDENTLOG_TEST_PG database" >&2
  exec "$@"
fi

PG_BIN="${INCIDENTLOG_PG_BIN:-/usr/lib/postgresql/15/bin}"
if [[ ! -x "$PG_BIN/initdb" || ! -x "$PG_BIN/pg_ctl" || ! -x "$PG_BIN/psql" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "with-postgres: ERROR: PostgreSQL binaries not found in $PG_BIN (set INCIDENTLOG_PG_BIN); CI=true, so this is a failure" >&2
    exit 1
  fi
  {
    echo "################################################################################"
    echo "## WARNING: PostgreSQL binaries not found in $PG_BIN"
    echo "## PostgreSQL tests will be SKIPPED. Install postgresql-15 or set INCIDENTLOG_PG_BIN."
    echo "################################################################################"
  } >&2
  exec "$@"
fi

# As root, the cluster runs as the postgres user (PostgreSQL refuses to run as root).
AS_PG=()
if [[ "$(id -u)" -eq 0 ]]; then
  AS_PG=(runuser -u postgres --)
fi

DIR="$(mktemp -d /tmp/incidentlog-pg.XXXXXX)"
DATA="$DIR/data"
LOG="$DIR/postgres.log"
started=0

cleanup() {
  local rc=$?
  if [[ $started -eq 1 ]]; then
    "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [[ ${#AS_PG[@]} -gt 0 ]]; then
  chown postgres: "$DIR"
fi
chmod 700 "$DIR"

"${AS_PG[@]}" "$PG_BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C \
  >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }

# fsync and synchronous_commit on: the numbers we compare against must be honest.
cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = minimal
max_wal_senders = 0
max_wal_size = 2GB
logging_collector = off
log_min_messages = warning
EOF

# A free port: pick random ones until the server starts (a port may be taken in between).
port=0
for _ in 1 2 3 4 5 6 7 8; do
  candidate=$((20000 + RANDOM % 40000))
  if (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    continue
  fi
  # Set before starting: a signal during `pg_ctl start` must still stop the server.
  started=1
  if "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "-p $candidate" -w -t 60 start >/dev/null 2>&1; then
    port=$candidate
    break
  fi
done
if [[ $port -eq 0 ]]; then
  echo "with-postgres: could not start PostgreSQL; log:" >&2
  cat "$LOG" >&2 || true
  exit 1
fi
# Restarts must come back on the same port.
echo "port = $port" >>"$DATA/postgresql.conf"

"$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -c "CREATE DATABASE incidentlog" >/dev/null

# stop/start wrapper for the failure test (runs pg_ctl as the cluster's owner).
cat >"$DIR/pg_ctl.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
case "\${1:-}" in
  stop) exec ${AS_PG[*]} "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop ;;
  start) exec ${AS_PG[*]} "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start ;;
  *) echo "usage: \$0 stop|start" >&2; exit 2 ;;
esac
EOF
chmod 755 "$DIR/pg_ctl.sh"

export INCIDENTLOG_TEST_PG="postgres://postgres@127.0.0.1:$port/incidentlog"
export INCIDENTLOG_TEST_PG_BIN="$PG_BIN"
export INCIDENTLOG_TEST_PG_DATA="$DATA"
export INCIDENTLOG_TEST_PG_CTL="$DIR/pg_ctl.sh"
echo "with-postgres: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data $DATA)" >&2

set +e
"$@"
rc=$?
set -e
exit "$rc"
