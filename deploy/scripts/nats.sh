#!/usr/bin/env bash
# Runs nats-server with JetStream in the foreground (exec, so whoever starts
# this script owns the server's pid).
#
#   deploy/scripts/nats.sh PORT STORE_DIR [NAME CLUSTER_PORT ROUTES [NATS-SERVER ARGS...]]
#
# With NAME, CLUSTER_PORT and ROUTES (comma-separated nats-route:// URLs) the
# server joins a cluster; every member needs a distinct NAME. Anything after
# ROUTES goes to nats-server as it is (e.g. --no_advertise).
#
# OTAKO_NATS_CONFIG, when set, is a configuration file read first (the
# shipped least-privilege users: deploy/nats/otako.conf, which takes its
# passwords from OTAKO_NATS_*_PASSWORD); the flags above override its
# listen address, port and store.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
port="${1:?port}"
store="${2:?store dir}"
mkdir -p "$store"
args=(-a 127.0.0.1 -p "$port" -js -sd "$store")
if [ -n "${OTAKO_NATS_CONFIG:-}" ]; then
  args=(-c "$OTAKO_NATS_CONFIG" "${args[@]}")
fi
if [ $# -ge 5 ]; then
  args+=(-n "$3" --cluster_name otako --cluster "nats://127.0.0.1:$4" --routes "$5")
  args+=("${@:6}")
fi
exec nats-server "${args[@]}"
