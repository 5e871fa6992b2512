#!/usr/bin/env bash
# A local scale drill, one command (issue #4): two gateway nodes under a
# steady message load, two more added, then the first two drained away with
# SIGTERM while their clients reconnect; prints a report (nodes over time,
# messages, deliveries, failures) and fails if any dispatch failed or any
# member session missed a message committed while it was open.
#
#   deploy/scripts/drill.sh [small|medium|large]      (default: large)
#
# Real processes, as in the end-to-end tests: nats-server, PostgreSQL,
# gateways and the backend; logs in target/otako-e2e/logs/ops_scale_drill/.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT"

scale="${1:-large}"
case "$scale" in
  small|medium|large) ;;
  *) log "usage: $0 [small|medium|large]"; exit 2 ;;
esac

bash deploy/scripts/install-deps.sh
log "building the binaries"
cargo build --workspace --bins
log "running the drill ($scale)"
OTAKO_DRILL_SCALE="$scale" cargo test -p otako-e2e --test ops_scale_drill -- --nocapture
