#!/usr/bin/env bash
# The standard benchmark set (BENCHMARKS.md), in under 5 minutes on 2 cores.
# Builds the release binaries, runs every workload of switchboard-bench (the
# relay ones against the floor relay in the same run), and writes:
#   $TARGET/bench/results-DATE.jsonl   one JSON line per workload
#   $TARGET/bench/results-DATE.txt     the human summaries and the machine
# The daemon runs at bcrypt cost 4; logins at the default cost 10 are measured
# on their own, and by the reconnect workload (password logins against RESUME). Set QUICK=1 for a smaller set (a sanity check, not figures).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bins
BENCH="$TARGET/release/switchboard-bench"
OUT="$TARGET/bench"
mkdir -p "$OUT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
JSONL="$OUT/results-$STAMP.jsonl"
TXT="$OUT/results-$STAMP.txt"
: >"$JSONL"

if [[ "${QUICK:-0}" == 1 ]]; then
  PAIRS=10 SECS=2 RATE=1000 IDLE=500 STORM=200 CALLS=20 LOGINS=10 ROOMS=25 ROOM_RATE=200
else
  PAIRS=100 SECS=8 RATE=10000 IDLE=9000 STORM=2000 CALLS=100 LOGINS=100 ROOMS=250 ROOM_RATE=2000
fi

{
  echo "# switchboard bench $STAMP"
  echo "# commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
  echo "# $(uname -srm); nproc $(nproc); $(free -g | awk '/^Mem:/ {print $2 " GiB RAM"}')"
  echo "# ulimit -n $(ulimit -n) (hard $(ulimit -Hn)); ulimit -u $(ulimit -u); pid_max $(cat /proc/sys/kernel/pid_max); threads-max $(cat /proc/sys/kernel/threads-max)"
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$TXT"

run() {
  echo "\$ switchboard-bench $*" | tee -a "$TXT"
  local started=$SECONDS
  "$BENCH" "$@" >"$OUT/last.out"
  grep -v '^{' "$OUT/last.out" | tee -a "$TXT"
  grep '^{' "$OUT/last.out" >>"$JSONL"
  echo "# took $((SECONDS - started)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$TXT"
}

START=$SECONDS
run relay --pairs "$PAIRS" --seconds "$SECS"
run relay --pairs "$PAIRS" --seconds "$SECS" --rate "$RATE"
run setup --pairs 10 --calls "$CALLS"
run storm --clients "$STORM" --timeout 90
run relay-storm --pairs 20 --clients "$STORM" --seconds 5 --timeout 90
run idle --clients "$LOGINS" --bcrypt-cost 10
run idle --clients "$IDLE" --timeout 90
run reconnect --clients "$STORM" --bcrypt-cost 10
# 250 rooms of 8 (2,000 participants) chatting, closed loop then open loop at
# 2,000 messages/s; compare with the relay lines above (same run).
run rooms --rooms "$ROOMS" --size 8 --seconds "$SECS"
run rooms --rooms "$ROOMS" --size 8 --seconds "$SECS" --rate "$ROOM_RATE"
# Storage: files go under $OUT (the disk being measured) and are removed afterwards.
if [[ "${QUICK:-0}" == 1 ]]; then JSECS=1 MESSAGES=100000; else JSECS=3 MESSAGES=1000000; fi
run journal --writers 1,16,64 --seconds "$JSECS" --dir "$OUT/journal"
run conversations --messages "$MESSAGES" --conversations 1000 --dir "$OUT/conversations"
echo "# total $((SECONDS - START)) s; results in $JSONL and $TXT" | tee -a "$TXT"
