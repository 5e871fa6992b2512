#!/usr/bin/env bash
# Runs one benchmark of BENCHMARKS.md with one command: builds the release
# binaries, then otako-bench starts its own stack (PostgreSQL, NATS, gateway
# nodes, backend if needed, and nats-server's WebSocket listener as the
# peer), measures, prints a table and writes report.json and report.png.
#
#   deploy/scripts/bench.sh idle|nodes|fanout|latency|latency-http|dm|storm|smoke [flags]
#   deploy/scripts/bench.sh all          every scenario but smoke, in turn
#   deploy/scripts/bench.sh floor [flags] the latency scenario's floor alone
#                                        (otako-bench floor: processes that
#                                        only move bytes, then nats-server
#                                        on the path for idle clients; no
#                                        stack, no peer)
#
# latency, latency-http and dm also measure that floor after both systems
# (--floor false leaves it out).
#
# dm: direct messages, 2,000 msg/s over 20,000 channels of 2 (10,000 users
# in 4 each), two nodes, dispatch drive; latency's figures and targets.
#
# storm: 10,000 sessions on one node drop at once and all resume together
# (time until all are live again, retries, resumed:false, the node's peak
# RSS and CPU); about half a minute. `--nats-max-consumers -1` lifts
# nats-server's default of 1,000 consumers per stream (see BENCHMARKS.md);
# `--nats-procs 1` runs every nats-server, the peer's too, with GOMAXPROCS=1.
#
# Results go to docs/bench/<scenario>/ (OTAKO_BENCH_OUT overrides the
# folder); any further flags go to `otako-bench run` (see its --help), e.g.
# --sessions 5000 --duration 10. Traffic stays on loopback.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT"

scenario="${1:-}"
case "$scenario" in
  idle|nodes|fanout|latency|latency-http|dm|storm|smoke|all|floor) shift ;;
  *) echo "usage: $0 idle|nodes|fanout|latency|latency-http|dm|storm|smoke|all|floor [otako-bench flags]" >&2; exit 2 ;;
esac

if [ "$scenario" = floor ]; then
  nice cargo build --release -q -p otako-bench
  exec target/release/otako-bench floor "$@"
fi

log "building release binaries (otako-gateway, otako-backend-shim, otako-bench)"
nice cargo build --release -q -p otako-gateway -p otako-backend-shim -p otako-bench
bash deploy/scripts/install-deps.sh

run_one() {
  local s="$1"; shift
  local out="${OTAKO_BENCH_OUT:-$OTAKO_ROOT/docs/bench/$s}"
  log "benchmark: $s (results in $out)"
  target/release/otako-bench run --scenario "$s" --out "$out" "$@"
}

if [ "$scenario" = all ]; then
  for s in idle fanout latency latency-http dm nodes storm; do
    OTAKO_BENCH_OUT="${OTAKO_BENCH_OUT:+$OTAKO_BENCH_OUT/$s}" run_one "$s" "$@"
  done
else
  run_one "$scenario" "$@"
fi
