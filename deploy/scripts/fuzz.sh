#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on the
# first crash, timeout or out-of-memory (see fuzz/README.md).
#   deploy/scripts/fuzz.sh [seconds per target]   (default 60, or OTAKO_FUZZ_SECONDS)
#   OTAKO_FUZZ_TARGETS="token cursor" limits the run to those targets.
# Each target starts from a temporary copy of its seed corpus, so what
# libFuzzer adds never lands in the repository; a crashing input is kept in
# fuzz/artifacts/<target>/ and the log in $OTAKO_STATE/fuzz/<target>.log.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT/fuzz"

seconds="${1:-${OTAKO_FUZZ_SECONDS:-60}}"
targets="${OTAKO_FUZZ_TARGETS:-dispatch_request client_frame token cursor}"
logs="$OTAKO_STATE/fuzz"
mkdir -p "$logs"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "building the fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build

for target in $targets; do
  # The gateway reads client frames of at most 1 KiB; the other inputs get
  # libFuzzer's default length cap.
  extra=()
  [ "$target" = client_frame ] && extra+=(-max_len=1024)
  cp -r "corpus/$target" "$work/$target"
  log "fuzzing $target for ${seconds}s"
  # -timeout bounds the time of one input: a slow one fails the run too.
  if ! cargo +nightly fuzz run "$target" "$work/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 "${extra[@]}" >"$logs/$target.log" 2>&1; then
    tail -n 60 "$logs/$target.log" >&2
    log "fuzz target $target failed: input in fuzz/artifacts/$target/, log in $logs/$target.log"
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec)' \
    "$logs/$target.log" >&2 || true
  log "$target: $(find "$work/$target" -type f | wc -l) corpus entries, no crash"
done
