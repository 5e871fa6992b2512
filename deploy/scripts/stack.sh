#!/usr/bin/env bash
# The whole local stack on loopback: NATS (JetStream), PostgreSQL, migrations,
# two gateway nodes and the backend. Installs what is missing first.
#
#   deploy/scripts/stack.sh up      build, start everything, print how to use it
#   deploy/scripts/stack.sh down    stop everything
#   deploy/scripts/stack.sh status
#
# Ports: NATS 4222 (OTAKO_NATS_PORT), PostgreSQL 5432 (OTAKO_PG_PORT), backend
# 8000 (OTAKO_BACKEND_PORT), gateways 8080/8081 (OTAKO_GATEWAY_PORT and the
# next one), admin 9090/9091 (OTAKO_ADMIN_PORT and the next one). State and
# logs live in .otako/.
# OTAKO_PROFILE=debug builds faster, runs slower (default: release).
#
# NATS runs with the least-privilege users of deploy/nats/otako.conf: the
# passwords are generated once into .otako/nats.env (mode 600), and each
# process gets its own user's URL. OTAKO_NATS_AUTH=0 runs NATS open instead.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

profile="${OTAKO_PROFILE:-release}"
pg_port="${OTAKO_PG_PORT:-5432}"
nats_port="${OTAKO_NATS_PORT:-4222}"
backend_port="${OTAKO_BACKEND_PORT:-8000}"
gateway_port="${OTAKO_GATEWAY_PORT:-8080}"
admin_port="${OTAKO_ADMIN_PORT:-9090}"
nats_auth="${OTAKO_NATS_AUTH:-1}"
run="$OTAKO_STATE/run"
logs="$OTAKO_STATE/logs"
nats_env="$OTAKO_STATE/nats.env"
target="${CARGO_TARGET_DIR:-$OTAKO_ROOT/target}/$profile"
export OTAKO_DEV=1
export DATABASE_URL="postgres://otako@127.0.0.1:$pg_port/otako"

# Writes the NATS users' passwords once (hex: safe inside a URL) and loads
# them. Nothing else is exported: each process gets only its own URL.
nats_passwords() {
  if [ ! -s "$nats_env" ]; then
    (
      umask 077
      for role in GATEWAY BACKEND OPS; do
        echo "OTAKO_NATS_${role}_PASSWORD=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
      done >"$nats_env"
    )
  fi
  chmod 600 "$nats_env"
  # shellcheck disable=SC1090
  source "$nats_env"
}

nats_url_for() { # user, password variable name
  if [ "$nats_auth" = 1 ]; then
    echo "nats://$1:${!2}@127.0.0.1:$nats_port"
  else
    echo "nats://127.0.0.1:$nats_port"
  fi
}

start_bg() { # name, command...
  local name="$1"; shift
  if [ -f "$run/$name.pid" ] && kill -0 "$(cat "$run/$name.pid")" 2>/dev/null; then
    log "$name already running"; return 0
  fi
  nohup "$@" >"$logs/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
}

wait_http() { # url, name
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "$2 did not come up; see $logs/$2.log"; tail -20 "$logs/$2.log" >&2; exit 1
}

up() {
  mkdir -p "$run" "$logs"
  bash "$OTAKO_ROOT/deploy/scripts/install-deps.sh"
  command -v curl >/dev/null || { apt-get install -y -qq curl >/dev/null; }
  log "building ($profile)"
  if [ "$profile" = release ]; then
    (cd "$OTAKO_ROOT" && cargo build --release -q -p otako-gateway -p otako-backend-shim)
  else
    (cd "$OTAKO_ROOT" && cargo build -q -p otako-gateway -p otako-backend-shim)
  fi
  log "starting PostgreSQL on 127.0.0.1:$pg_port"
  bash "$OTAKO_ROOT/deploy/scripts/postgres.sh" "$OTAKO_STATE/postgres" "$pg_port" >/dev/null
  log "starting NATS on 127.0.0.1:$nats_port"
  if [ "$nats_auth" = 1 ]; then
    nats_passwords
    OTAKO_NATS_CONFIG="$OTAKO_ROOT/deploy/nats/otako.conf" \
      OTAKO_NATS_GATEWAY_PASSWORD="$OTAKO_NATS_GATEWAY_PASSWORD" \
      OTAKO_NATS_BACKEND_PASSWORD="$OTAKO_NATS_BACKEND_PASSWORD" \
      OTAKO_NATS_OPS_PASSWORD="$OTAKO_NATS_OPS_PASSWORD" \
      start_bg nats bash "$OTAKO_ROOT/deploy/scripts/nats.sh" "$nats_port" "$OTAKO_STATE/nats"
  else
    start_bg nats bash "$OTAKO_ROOT/deploy/scripts/nats.sh" "$nats_port" "$OTAKO_STATE/nats"
  fi
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
  log "applying migrations"
  "$target/otako-gateway" migrate
  for i in 1 2; do
    OTAKO_NATS_URL="$(nats_url_for otako-gateway OTAKO_NATS_GATEWAY_PASSWORD)" \
      OTAKO_NODE_ID="gateway-$i" OTAKO_GATEWAY_LISTEN="127.0.0.1:$((gateway_port + i - 1))" \
      OTAKO_ADMIN_LISTEN="127.0.0.1:$((admin_port + i - 1))" start_bg "gateway-$i" "$target/otako-gateway"
  done
  OTAKO_NATS_URL="$(nats_url_for otako-backend OTAKO_NATS_BACKEND_PASSWORD)" \
    OTAKO_HTTP_LISTEN="127.0.0.1:$backend_port" \
    OTAKO_PUBLIC_GATEWAY_URLS="ws://127.0.0.1:$gateway_port/gateway,ws://127.0.0.1:$((gateway_port + 1))/gateway" \
    start_bg backend "$target/otako-backend-shim"
  wait_http "http://127.0.0.1:$admin_port/readyz" gateway-1
  wait_http "http://127.0.0.1:$((admin_port + 1))/readyz" gateway-2
  wait_http "http://127.0.0.1:$backend_port/healthz" backend
  if [ "$nats_auth" = 1 ]; then
    nats_note="NATS :$nats_port requires the users of deploy/nats/otako.conf; their
passwords are in $nats_env (the \`nats\` CLI: user otako-ops)."
  else
    nats_note="NATS :$nats_port takes any client (OTAKO_NATS_AUTH=0)."
  fi
  cat <<USAGE

Otako is up. Chat in your browser: http://127.0.0.1:$backend_port/ (open it in two
windows, sign up as two users, add one to the other's channel by user id).

Backend http://127.0.0.1:$backend_port, gateways ws://127.0.0.1:$gateway_port/gateway
and ws://127.0.0.1:$((gateway_port + 1))/gateway (admin :$admin_port and :$((admin_port + 1))),
PostgreSQL :$pg_port. Logs: $logs/. Stop it: deploy/scripts/stack.sh down
$nats_note

Try it (copy and paste):

  alice=\$(curl -s -XPOST localhost:$backend_port/users -H 'content-type: application/json' -d '{"username":"alice_'\$RANDOM'"}')
  token=\$(echo "\$alice" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  channel=\$(curl -s -XPOST localhost:$backend_port/channels -H "authorization: \$token" -H 'content-type: application/json' -d '{"name":"general"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

  # watch the session in one terminal (or in the background, as here)
  $OTAKO_VENV/bin/python deploy/scripts/watch.py "\$token" ws://127.0.0.1:$((gateway_port + 1))/gateway &

  # post a message: the session above receives EVENT_MESSAGE_CREATE
  curl -s -XPOST localhost:$backend_port/channels/\$channel/messages -H "authorization: \$token" \\
       -H 'content-type: application/json' -d '{"content":"Hello! This is a message from the Otako client!","nonce":"87654GFGDS7544567FD"}'
USAGE
}

down() {
  for name in backend gateway-1 gateway-2 nats; do
    if [ -f "$run/$name.pid" ]; then
      pid="$(cat "$run/$name.pid")"
      kill "$pid" 2>/dev/null && log "stopping $name"
      for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$run/$name.pid"
    fi
  done
  bash "$OTAKO_ROOT/deploy/scripts/postgres.sh" stop "$OTAKO_STATE/postgres"
  log "stopped"
}

status() {
  for name in nats gateway-1 gateway-2 backend; do
    if [ -f "$run/$name.pid" ] && kill -0 "$(cat "$run/$name.pid")" 2>/dev/null; then
      echo "$name: running (pid $(cat "$run/$name.pid"))"
    else
      echo "$name: stopped"
    fi
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
