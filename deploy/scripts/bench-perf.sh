#!/usr/bin/env bash
# Samples where the gateways' CPU goes during the latency scenario (1,000
# msg/s over 1,000 channels of 10, two nodes): `perf record` with DWARF
# call graphs on both gateway processes of the run for PERF_SECONDS (15)
# of the measuring window, then deploy/scripts/hops.py splits the samples
# by the hop of the event's path they belong to (BENCHMARKS.md, "Where a
# small-channel event's CPU goes").
#
#   deploy/scripts/bench-perf.sh [otako-bench run flags]
#   e.g. --pg-port 54343 --pg-dir target/otako-bench/postgres
#
# Needs perf (linux-perf) and root or perf_event_paranoid <= 1. The
# release build carries line-table debug info, which the DWARF unwinder
# needs (Rust code keeps no frame pointers). Output in target/otako-bench/perf/.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT"

seconds="${PERF_SECONDS:-15}"
freq="${PERF_FREQ:-499}"
out="$OTAKO_ROOT/target/otako-bench/perf"
mkdir -p "$out"
command -v perf >/dev/null 2>&1 || { log "perf is not installed (apt-get install linux-perf)"; exit 1; }

log "building release binaries (otako-gateway, otako-backend-shim, otako-bench)"
nice cargo build --release -q -p otako-gateway -p otako-backend-shim -p otako-bench
bash deploy/scripts/install-deps.sh

gateway_bin="$(readlink -f target/release/otako-gateway)"
# This checkout's gateways only: another checkout's stack may run beside it.
our_gateways() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = "$gateway_bin" ] && basename "$p"
  done
  return 0
}

bench_log="$out/bench.log"
target/release/otako-bench run --scenario latency --peer false --no-install \
  --out "$out/report" "$@" 2>"$bench_log" &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' EXIT

# The drive starts once the sessions are held; its warm-up is 5 s.
until grep -q "otako: .* sessions held" "$bench_log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$bench_log" >&2; exit 1; }
  sleep 1
done
sleep 7
pids="$(our_gateways | paste -sd,)"
[ -n "$pids" ] || { log "no gateway of this checkout is running"; exit 1; }
log "perf record on gateways $pids for $seconds s"
perf record -F "$freq" --call-graph dwarf,16384 -p "$pids" -o "$out/perf.data" -- sleep "$seconds" 2>"$out/perf-record.log"
wait "$bench" || true
trap - EXIT
cat "$bench_log" | grep -v '^\[otako-bench\] note' >&2 || true

log "folding the samples (perf script)"
perf script -i "$out/perf.data" -F comm,tid,ip,sym,dso --no-inline 2>/dev/null >"$out/perf.script"
python3 deploy/scripts/hops.py perf "$out/perf.script" | tee "$out/hops.txt"
