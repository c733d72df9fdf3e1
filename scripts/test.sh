#!/usr/bin/env bash
# The whole test suite, as README.md and CI run it: formatting, lints, then
# unit and integration tests (a real server on port 0, real TCP and TLS), then
# scripts/test_server.sh (the built daemon driven by switchboard-cli from bash).
# Needs only the Rust toolchain, gcc, make and perl: OpenSSL is built from
# source (vendored) and test certificates are made at test time.
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "test.sh: rustfmt is not installed; skipping the formatting check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets -- -D warnings
else
  echo "test.sh: clippy is not installed; skipping the lint check" >&2
fi
cargo test --locked
scripts/test_server.sh
