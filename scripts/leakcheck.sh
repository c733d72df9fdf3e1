#!/usr/bin/env bash
# Resource accounting: N connect/login/call/hangup/disconnect cycles (default
# 10,000) against a release daemon, then its thread and descriptor counts from
# /proc compared with before. Prints the figures; exits non-zero on a leak.
#   scripts/leakcheck.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-10000}"
SWITCHBOARD_CYCLES="$cycles" cargo test --release --locked --test tests \
  faults::cycles_leave_no_threads_descriptors_or_sessions_behind -- --exact --nocapture 2>&1 \
  | grep -E "^cycles=|test result|panicked|assertion"
