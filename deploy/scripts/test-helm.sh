#!/usr/bin/env bash
# Lints and renders the Helm chart with Helm's own engine, validates the manifests
# against Kubernetes' schemas, and checks the container and compose files.
# Needs no cluster, no helm binary and no container engine.
#
#   deploy/scripts/test-helm.sh [PYTEST ARGS...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$OTAKO_ROOT/deploy/scripts/install-deps.sh"
cd "$OTAKO_ROOT"
exec "$OTAKO_VENV/bin/python" -m pytest -q tests/helm "$@"
