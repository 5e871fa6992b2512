#!/usr/bin/env bash
# Starts a private PostgreSQL on loopback, if it is not running already, and
# prints its superuser URL. Creates the non-superuser role `otako` owning the
# database `otako`, as the contract's default DATABASE_URL expects.
#
#   deploy/scripts/postgres.sh [DATA_DIR] [PORT]     start (idempotent)
#   deploy/scripts/postgres.sh stop [DATA_DIR]
#
# initdb refuses to run as root, so as root the server runs as `postgres`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "${1:-}" = stop ]; then
  dir="${2:-$OTAKO_STATE/postgres}"
  bin="$(pg_bindir)"
  as=""; [ "$(id -u)" = 0 ] && as="runuser -u postgres --"
  [ -f "$dir/data/postmaster.pid" ] && $as "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  exit 0
fi

dir="${1:-$OTAKO_STATE/postgres}"
port="${2:-5432}"
bin="$(pg_bindir)" || { log "PostgreSQL is not installed: run deploy/scripts/install-deps.sh"; exit 1; }
mkdir -p "$dir"
as=""
if [ "$(id -u)" = 0 ]; then
  as="runuser -u postgres --"
  chown postgres "$dir"
fi

# Several test processes may ask at once: one starts it, the others wait.
exec 9>"$dir/.lock"
flock 9

if [ ! -f "$dir/data/PG_VERSION" ]; then
  $as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
fi
if ! $as "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  $as "$bin/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/postgres.log" start 9>&- \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off -c synchronous_commit=off -c max_connections=400" >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; exit 1; }
fi
psql_() { psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qtAX "$@"; }
if [ "$(psql_ -c "SELECT 1 FROM pg_roles WHERE rolname = 'otako'")" != 1 ]; then
  psql_ -c "CREATE ROLE otako LOGIN CREATEDB NOSUPERUSER"
fi
if [ "$(psql_ -c "SELECT 1 FROM pg_database WHERE datname = 'otako'")" != 1 ]; then
  psql_ -c "CREATE DATABASE otako OWNER otako"
fi
echo "postgres://postgres@127.0.0.1:$port/postgres"
