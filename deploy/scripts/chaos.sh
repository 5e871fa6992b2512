#!/usr/bin/env bash
# The chaos run, one command: protocol-following clients (heartbeats,
# resume with the last cursor on every close, backoff with full jitter) and
# HTTP writers on a 3-server NATS cluster, 3 gateway nodes, the backend and a
# PostgreSQL server of the run's own, while gateways are SIGKILLed and
# drained, clients stop reading, a node's NATS link is cut, the NATS server
# leading the history is killed and
# PostgreSQL restarts. Counts every accepted message per client (received,
# lost, duplicated, out of order), prints a table, writes report.json and
# chaos.png to OUT_DIR, and fails on any loss, duplicate or order violation.
#
#   deploy/scripts/chaos.sh [--duration SECONDS] [--out OUT_DIR] [otako-chaos options...]
#
# Defaults: 60 s, one cycle of the six faults, OUT_DIR target/otako-e2e/chaos;
# `--cycles N` plays them N times. Logs in target/otako-e2e/logs/chaos/.
# Every other option: target/debug/otako-chaos --help.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT"

bash deploy/scripts/install-deps.sh
log "building the binaries"
cargo build -q -p otako-gateway -p otako-backend-shim -p otako-e2e --bins
log "running the chaos run"
exec target/debug/otako-chaos "$@"
