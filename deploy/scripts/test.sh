#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this):
# formatting and lints, unit tests, end-to-end tests over real processes
# (nats-server, PostgreSQL, gateways, backend), the TypeScript SDK's unit,
# end-to-end and browser tests (clients/js), and the Helm chart tests.
# Installs what is missing first; starts every server it needs itself.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OTAKO_ROOT"

bash deploy/scripts/install-deps.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
log "TypeScript SDK: npm ci, unit tests"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test)
log "building the binaries the end-to-end tests run"
cargo build --workspace --bins -q
log "cargo test"
# End-to-end tests mostly wait on sockets; a few more threads than cores
# keeps the suite short without starving the servers under test.
cargo test --workspace -q --no-fail-fast -- --test-threads="${OTAKO_TEST_THREADS:-3}"
log "TypeScript SDK: end-to-end tests"
(cd clients/js && npm run -s test:e2e)
log "the chat page in Chromium"
(cd clients/js && npm run -s test:browser)
log "chart and container tests"
bash deploy/scripts/test-helm.sh
bash deploy/scripts/fuzz.sh
