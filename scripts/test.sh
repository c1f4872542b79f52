#!/usr/bin/env bash
# The whole test suite: Redis and Postgres up, Prometheus, openssl and Chromium installed
# (scripts/services.sh), then cargo test.
# Extra arguments go to cargo test (e.g. scripts/test.sh -- tx_lane).
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  echo "usage: scripts/test.sh [cargo test args...]"; exit 0
fi
cd "$(dirname "$0")/.."
eval "$(MAILFLEET_DB=mailfleet_test scripts/services.sh)"
scripts/services.sh --test-tools  # Prometheus, openssl and Chromium, when missing
# The test binaries spawn `mailfleet` itself for CLI and multi-process tests.
cargo build --quiet --bin mailfleet
cargo test "$@"
