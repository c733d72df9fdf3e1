#!/usr/bin/env bash
# Makes sure coturn's `turnserver` and `turnutils_uclient` are on PATH, installing
# Debian's `coturn` package if they are not. Idempotent; starts no service (a
# temporary policy-rc.d forbids it, as in Docker images) and leaves none enabled.
# The TURN integration tests run it before starting their own turnserver on loopback.
set -euo pipefail

if command -v turnserver >/dev/null 2>&1 && command -v turnutils_uclient >/dev/null 2>&1; then
  exit 0
fi

fail() {
  echo "ensure_coturn.sh: $*; install coturn (turnserver, turnutils_uclient) by hand" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "turnserver is missing and apt-get is not available"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null ||
    fail "turnserver is missing and installing it needs root (or password-less sudo)"
  sudo=(sudo -n)
fi

# Forbid service starts during the install, unless a policy already exists.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

install() {
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends coturn >&2
}
echo "ensure_coturn.sh: installing the coturn package" >&2
install || { "${sudo[@]}" apt-get update -q >&2 && install; } ||
  fail "apt-get could not install the coturn package"
# Installed for the tests only: not a service started at boot either.
if command -v systemctl >/dev/null 2>&1; then
  "${sudo[@]}" systemctl disable coturn >/dev/null 2>&1 || true
fi

command -v turnserver >/dev/null 2>&1 && command -v turnutils_uclient >/dev/null 2>&1 ||
  fail "the coturn package installed but turnserver or turnutils_uclient is not on PATH"
