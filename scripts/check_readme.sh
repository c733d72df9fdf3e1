#!/usr/bin/env bash
# The README's promise, checked: the two commands of its "Set-up: two commands"
# block work as written on this checkout. Run by scripts/test.sh (the second of
# those commands), so CI fails if either command changes or stops working.
#
# The first command (`cargo run --release`) is run exactly as the README writes
# it. Only the environment differs: SWITCHBOARD_CONFIG points it at a port the
# kernel picks and a temporary data directory, so the check neither needs port
# 8080 free nor touches ./data. It must build, start, print `listening on`,
# serve a HEARTBEAT, and stop cleanly (exit 0) on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "check_readme.sh: FAIL: $*" >&2
  exit 1
}

# The fenced block after the set-up heading: one command per line, comments cut.
mapfile -t commands < <(
  awk '/^## Set-up: two commands/ {in_section=1; next}
       in_section && /^```sh/ {in_block=1; next}
       in_block && /^```/ {exit}
       in_block {sub(/[[:space:]]*#.*/, ""); if (length($0)) print}' README.md
)
[[ ${#commands[@]} -eq 2 ]] || fail "README.md's set-up block should hold two commands, found ${#commands[@]}: ${commands[*]:-none}"
[[ "${commands[0]}" == "cargo run --release" ]] || fail "the first set-up command is '${commands[0]}'; update this check with it"
[[ "${commands[1]}" == "scripts/test.sh" ]] || fail "the second set-up command is '${commands[1]}'; update this check with it"
grep -q 'scripts/test.sh' .ci/run || fail ".ci/run does not run scripts/test.sh, the README's test command"

tmp="$(mktemp -d)"
daemon_pid=""
cleanup() {
  if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

printf '{"server":{"port":0},"storage":{"data_dir":"%s/data"}}\n' "$tmp" >"$tmp/config.json"
echo "check_readme.sh: running the README's first command: ${commands[0]} (release build)" >&2
read -ra argv <<<"${commands[0]}"
SWITCHBOARD_CONFIG="$tmp/config.json" "${argv[@]}" >"$tmp/out" 2>"$tmp/err" &
runner=$!
for _ in $(seq 1 1800); do
  grep -q '^listening on ' "$tmp/out" 2>/dev/null && break
  kill -0 "$runner" 2>/dev/null || { cat "$tmp/err" >&2; fail "'${commands[0]}' exited before listening"; }
  sleep 0.5
done
grep -q '^listening on ' "$tmp/out" || { tail -n 30 "$tmp/err" >&2; fail "'${commands[0]}' did not print 'listening on' within 15 minutes"; }
addr="$(sed -n 's/^listening on //p' "$tmp/out" | head -n 1)"
# On Unix `cargo run` replaces itself with the program; if it did not, the
# daemon is its child.
if [[ "$(cat "/proc/$runner/comm" 2>/dev/null)" == switchboard ]]; then
  daemon_pid=$runner
else
  daemon_pid="$(pgrep -P "$runner" -x switchboard | head -n 1 || true)"
fi
[[ -n "$daemon_pid" ]] || fail "cannot find the daemon's process"

# One HEARTBEAT round trip over the real port, with bash's /dev/tcp.
host="${addr%:*}"
port="${addr##*:}"
exec 5<>"/dev/tcp/$host/$port" || fail "cannot connect to $addr"
payload='{"timestamp":42}'
printf "\x00\x00\x00\x$(printf %02x $((${#payload} + 1)))\x11%s" "$payload" >&5
# The answer is one short frame; read what arrives within two seconds.
answer="$(timeout 2 cat <&5 | tr -d '\000-\037' || true)"
exec 5>&-
[[ "$answer" == *'"timestamp":42'* ]] || fail "no HEARTBEAT answer from $addr (got '$answer')"

kill -TERM "$daemon_pid"
status=0
wait "$runner" || status=$?
daemon_pid=""
[[ $status -eq 0 ]] || { tail -n 20 "$tmp/err" >&2; fail "'${commands[0]}' exited $status after SIGTERM, not 0"; }
echo "check_readme.sh: ok: '${commands[0]}' served on $addr and stopped cleanly" >&2
