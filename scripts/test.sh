#!/usr/bin/env bash
# The whole test suite, as README.md and CI run it: formatting, lints, then
# unit and integration tests (a real server on port 0, real TCP and TLS), then
# scripts/test_server.sh (the built daemon driven by switchboard-cli from bash),
# then scripts/check_readme.sh (README's set-up commands, as written).
# Needs only the Rust toolchain, gcc, make and perl: OpenSSL is built from
# source (vendored) and test certificates are made at test time.
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything builds in the release profile: the README's `cargo run --release`
# (checked at the end) needs a release build anyway, and one profile means
# OpenSSL is compiled once, not twice. Optimised tests also run faster.

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "test.sh: rustfmt is not installed; skipping the formatting check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --release --all-targets -- -D warnings
else
  echo "test.sh: clippy is not installed; skipping the lint check" >&2
fi
# The TURN test runs a real coturn; say so when it has to be installed first
# (Debian's package, through apt-get), rather than installing it silently.
if ! command -v turnserver >/dev/null 2>&1; then
  echo "test.sh: coturn is not installed; installing Debian's coturn package for the TURN test (scripts/ensure_coturn.sh, apt-get)" >&2
  scripts/ensure_coturn.sh
fi
cargo test --locked --release
SWITCHBOARD_PROFILE=release scripts/test_server.sh
scripts/check_readme.sh
