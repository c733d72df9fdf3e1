#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/) for a given time each.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 600 s each, all targets
# Needs cargo-fuzz (installed from crates.io if missing). It runs on the
# stable toolchain: RUSTC_BOOTSTRAP=1 lets it pass the sanitizer flags.
# Findings land in fuzz/artifacts/TARGET/; keep each as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decode message_parse)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  echo "fuzz.sh: $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  cargo fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 \
    | tee "fuzz/$target.log" | grep -E "^#[0-9]+ +(INITED|DONE|pulse)|ERROR|panicked|SUMMARY" || true
  if grep -qE "^==[0-9]+==ERROR|panicked|deadly signal" "fuzz/$target.log"; then
    echo "fuzz.sh: $target found a failure; see fuzz/$target.log and fuzz/artifacts/$target/" >&2
    exit 1
  fi
  tail -n 3 "fuzz/$target.log"
done
