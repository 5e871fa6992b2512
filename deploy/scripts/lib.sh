# Shared by the scripts in this folder: where things live.
# shellcheck shell=bash
set -euo pipefail
OTAKO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OTAKO_VENV="${OTAKO_VENV:-$OTAKO_ROOT/.venv}"
# Runtime state of the local stack and the tests (data dirs, logs, pids).
OTAKO_STATE="${OTAKO_STATE:-$OTAKO_ROOT/.otako}"
export PATH="$OTAKO_VENV/bin:$PATH"

log() { printf '[otako] %s\n' "$*" >&2; }

# Debian puts the PostgreSQL server binaries outside PATH.
pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}
