#!/usr/bin/env bash
# Instructions per small-channel event, not time: one gateway node under
# `valgrind --tool=callgrind` (the release build, which carries line-table
# debug info), 1,000 sessions in channels of 10 on it, 200 warm-up events,
# then a fixed number of events (2,000 by default) sent one at a time, each
# delivered to its 10 sessions before the next. Prints the node's
# instructions per event (its idle cost over the same time taken off) and
# the 15 functions with the highest inclusive cost. The figure does not
# depend on the machine's load, so a change that adds work per event shows
# at once (BENCHMARKS.md, "Where a small-channel event's CPU goes").
#
#   deploy/scripts/bench-callgrind.sh [otako-bench run flags]
#   e.g. --events 500, or --pg-port 54343 --pg-dir target/otako-bench/postgres
#        beside a test suite that holds PostgreSQL's default port
#
# Valgrind is installed with apt-get when missing (a clean Debian CI
# machine). Results go to target/otako-bench/instructions/ (OTAKO_BENCH_OUT
# overrides); the callgrind dumps stay in the run's folder for
# callgrind_annotate, and deploy/scripts/hops.py callgrind splits one by hop.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT"

if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  log "installing valgrind with apt-get"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq valgrind >/dev/null
fi

log "building release binaries (otako-gateway, otako-backend-shim, otako-bench)"
nice cargo build --release -q -p otako-gateway -p otako-backend-shim -p otako-bench
bash deploy/scripts/install-deps.sh

out="${OTAKO_BENCH_OUT:-$OTAKO_ROOT/target/otako-bench/instructions}"
log "benchmark: instructions (results in $out)"
target/release/otako-bench run --scenario instructions --out "$out" --no-install "$@"
