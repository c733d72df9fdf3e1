#!/usr/bin/env bash
# End-to-end test of the built binaries: starts the daemon on a free port and
# drives it with switchboard-cli the way a shell script would: register, login,
# users, ping, exit codes, then a whole call between two `session` processes fed
# through named pipes, then protocol 2: a token file, RESUME, TOKEN_REFRESH, the
# fallback to the password, a guest, and --protocol 1. Values come out of the
# sessions' output with `switchboard-cli field`. Needs bash, grep, sed and stat.
#
# Uses target/debug (or $CARGO_TARGET_DIR/debug) after `cargo build --locked --bins`;
# SWITCHBOARD_PROFILE=release uses target/release (scripts/test.sh does);
# SWITCHBOARD_SKIP_BUILD=1 skips the build and uses what is there.
set -euo pipefail

# A relative CARGO_TARGET_DIR means the caller's directory, not the repository's.
if [[ -n "${CARGO_TARGET_DIR:-}" && "${CARGO_TARGET_DIR}" != /* ]]; then
  CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
profile="${SWITCHBOARD_PROFILE:-debug}"
case "$profile" in
  debug) profile_flag=() ;;
  release) profile_flag=(--release) ;;
  *) echo "test_server.sh: SWITCHBOARD_PROFILE must be debug or release, not '$profile'" >&2; exit 2 ;;
esac
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/$profile"
if [[ -z "${SWITCHBOARD_SKIP_BUILD:-}" ]]; then
  cargo build --locked --bins --quiet "${profile_flag[@]}"
fi
server_bin="$bin_dir/switchboard"
cli_bin="$bin_dir/switchboard-cli"
for bin in "$server_bin" "$cli_bin"; do
  [[ -x "$bin" ]] || { echo "FAIL: $bin is not built" >&2; exit 1; }
done

tmp="$(mktemp -d)"
pids=()
passed=0

cleanup() {
  local pid
  exec 3>&- 4>&-
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prints a failure with the files that explain it, then exits (the trap cleans up).
fail() {
  local message="$1"
  shift
  echo "FAIL: $message" >&2
  local file
  for file in "$@"; do
    if [[ -e "$file" ]]; then
      echo "--- ${file#"$tmp"/}" >&2
      cat "$file" >&2
    fi
  done
  echo "--- daemon.err (last 20 lines)" >&2
  tail -n 20 "$tmp/daemon.err" >&2 || true
  exit 1
}

pass() {
  passed=$((passed + 1))
}

# wait_for FILE FIXED-STRING SECONDS: waits until a line of FILE contains the string.
wait_for() {
  local file="$1" needle="$2" seconds="$3"
  local tries=$((seconds * 20))
  while ((tries-- > 0)); do
    if [[ -f "$file" ]] && grep -qF -- "$needle" "$file"; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# wait_exit PID SECONDS: waits for a background process, prints its exit code;
# fails if it is still running after SECONDS.
wait_exit() {
  local pid="$1" seconds="$2"
  local tries=$((seconds * 20))
  while kill -0 "$pid" 2>/dev/null; do
    if ((tries-- <= 0)); then
      return 1
    fi
    sleep 0.05
  done
  local code=0
  wait "$pid" || code=$?
  echo "$code"
}

# cli NAME ARGS...: runs switchboard-cli against the daemon with stdin closed;
# stdout, stderr and the exit code go to $tmp/NAME.{out,err,code}.
cli() {
  local name="$1"
  shift
  local code=0
  "$cli_bin" --addr "$addr" --timeout 10 "$@" </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" || code=$?
  echo "$code" >"$tmp/$name.code"
}

# expect_run NAME CODE EXPECTED-STDOUT: checks a `cli` run's exit code and exact stdout.
expect_run() {
  local name="$1" code="$2" expected="$3"
  local got_code
  got_code="$(cat "$tmp/$name.code")"
  [[ "$got_code" == "$code" ]] ||
    fail "$name: exit code $got_code, expected $code" "$tmp/$name.out" "$tmp/$name.err"
  [[ "$(cat "$tmp/$name.out")" == "$expected" ]] ||
    fail "$name: stdout differs; expected:"$'\n'"$expected" "$tmp/$name.out" "$tmp/$name.err"
  pass
}

# expect_code NAME CODE: checks a `cli` run's exit code only.
expect_code() {
  local got_code
  got_code="$(cat "$tmp/$1.code")"
  [[ "$got_code" == "$2" ]] ||
    fail "$1: exit code $got_code, expected $2" "$tmp/$1.out" "$tmp/$1.err"
  pass
}

# expect_stderr NAME TEXT: the run's stderr contains TEXT.
expect_stderr() {
  grep -qF -- "$2" "$tmp/$1.err" || fail "$1: stderr lacks \"$2\"" "$tmp/$1.err"
  pass
}

# field ARGS...: `switchboard-cli field ARGS` (no server involved); its stderr goes
# to $tmp/field.err.
field() {
  "$cli_bin" --timeout 10 field "$@" 2>"$tmp/field.err"
}

# expect_field FILE TYPE PATH VALUE: the session output FILE gets a TYPE line within
# 10 s, and its payload's PATH is VALUE.
expect_field() {
  local file="$1" type="$2" path="$3" value="$4" got code=0
  got="$(field --wait "$type" "$path" "$file")" || code=$?
  [[ "$code" == 0 ]] ||
    fail "${file#"$tmp"/}: no $type with $path (field exit code $code)" "$file" "$tmp/field.err"
  [[ "$got" == "$value" ]] ||
    fail "${file#"$tmp"/}: $type's $path is '$got', expected '$value'" "$file"
  pass
}

# expect_line FILE LINE: FILE (a session's output) gets exactly LINE within 10 s.
expect_line() {
  local file="$1" line="$2"
  wait_for "$file" "$line" 10 || fail "${file#"$tmp"/}: no line"$'\n'"$line" "$file" "${file%.out}.err"
  grep -qxF -- "$line" "$file" || fail "${file#"$tmp"/}: not a whole line:"$'\n'"$line" "$file"
  pass
}

# --- the daemon, on a free port, with its data and cheap bcrypt in the temp dir
printf '{"auth":{"bcrypt_cost":4}}\n' >"$tmp/config.json"
"$server_bin" --bind 127.0.0.1 --port 0 --data-dir "$tmp/data" --config "$tmp/config.json" \
  >"$tmp/daemon.out" 2>"$tmp/daemon.err" &
pids+=("$!")
wait_for "$tmp/daemon.out" "listening on " 30 || fail "the daemon printed no address" "$tmp/daemon.out"
addr="$(sed -n 's/^listening on //p' "$tmp/daemon.out" | head -n 1)"
[[ "$addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "bad address line: $addr" "$tmp/daemon.out"
pass

printf 'alice-secret\n' >"$tmp/alice.pw"
printf 'bob-secret\n' >"$tmp/bob.pw"

# --- one-shot commands
cli register-alice register --username alice --password-file "$tmp/alice.pw"
expect_run register-alice 0 "registered user_id=1 username=alice"
SWITCHBOARD_PASSWORD=bob-secret cli register-bob register --username bob
expect_run register-bob 0 "registered user_id=2 username=bob"
cli register-again register --username alice --password-file "$tmp/bob.pw"
expect_run register-again 1 ""
expect_stderr register-again "username is taken"

cli login-alice login --username alice --password-file "$tmp/alice.pw"
expect_run login-alice 0 "logged in user_id=1 username=alice"
cli login-bob login --username bob --password-file "$tmp/bob.pw"
expect_run login-bob 0 "logged in user_id=2 username=bob"
cli login-wrong login --username alice --password-file "$tmp/bob.pw"
expect_run login-wrong 1 ""
expect_stderr login-wrong "invalid username or password"
cli login-nopassword login --username alice
expect_run login-nopassword 2 ""
expect_stderr login-nopassword "stdin is not a terminal"

# login and users log out before they exit: presence is settled when they return.
cli users users --username alice --password-file "$tmp/alice.pw"
expect_run users 0 "$(printf '1\talice\tAvailable\n2\tbob\tDisconnected')"
cli users-json users --json --username bob --password-file "$tmp/bob.pw"
expect_run users-json 0 \
  '{"users":[{"user_id":"1","username":"alice","state":"Disconnected"},{"user_id":"2","username":"bob","state":"Available"}]}'

cli ping ping --count 3
[[ "$(cat "$tmp/ping.code")" == 0 ]] || fail "ping: exit code $(cat "$tmp/ping.code")" "$tmp/ping.err"
[[ "$(grep -cE '^pong [0-9]+\.[0-9]{3} ms$' "$tmp/ping.out")" == 3 ]] ||
  fail "ping: expected three 'pong N.NNN ms' lines" "$tmp/ping.out"
pass

# A port nothing listens on: the daemon's port after a throwaway daemon stopped.
"$server_bin" --bind 127.0.0.1 --port 0 --data-dir "$tmp/closed" --config "$tmp/config.json" \
  >"$tmp/closed-daemon.out" 2>/dev/null &
closed_pid=$!
pids+=("$closed_pid")
wait_for "$tmp/closed-daemon.out" "listening on " 30 || fail "the second daemon printed no address"
closed_addr="$(sed -n 's/^listening on //p' "$tmp/closed-daemon.out" | head -n 1)"
kill "$closed_pid"
wait_exit "$closed_pid" 10 >/dev/null || fail "the second daemon did not stop"
code=0
"$cli_bin" --addr "$closed_addr" --timeout 5 ping >"$tmp/closed.out" 2>"$tmp/closed.err" || code=$?
[[ "$code" == 3 ]] || fail "ping on a closed port: exit code $code, expected 3" "$tmp/closed.err"
pass

# --- a whole call between two sessions, each fed through a named pipe
mkfifo "$tmp/alice.in" "$tmp/bob.in"
# Read-write opens of a FIFO do not block; the sessions must not inherit them.
exec 3<>"$tmp/alice.in" 4<>"$tmp/bob.in"

"$cli_bin" --addr "$addr" --timeout 20 session --username bob --password-file "$tmp/bob.pw" \
  --until HANGUP <"$tmp/bob.in" >"$tmp/bob.out" 2>"$tmp/bob.err" 3>&- 4>&- &
bob_pid=$!
pids+=("$bob_pid")
# Protocol 2 by default: WELCOME first, then the LOGIN_RESPONSE with a session token.
expect_field "$tmp/bob.out" WELCOME protocol_version 2
expect_field "$tmp/bob.out" LOGIN_RESPONSE user_id 2
expect_field "$tmp/bob.out" LOGIN_RESPONSE success true

# alice ends with a HEARTBEAT and --until HEARTBEAT: its answer comes after
# anything her earlier commands caused, so she stops once they are all done.
"$cli_bin" --addr "$addr" --timeout 20 session --username alice --password-file "$tmp/alice.pw" \
  --until HEARTBEAT <"$tmp/alice.in" >"$tmp/alice.out" 2>"$tmp/alice.err" 3>&- 4>&- &
alice_pid=$!
pids+=("$alice_pid")
expect_field "$tmp/alice.out" LOGIN_RESPONSE username alice
expect_line "$tmp/bob.out" \
  '{"type":"USER_STATE_UPDATE","code":7,"payload":{"user_id":"1","username":"alice","state":"Available"}}'

# alice rings bob (type by name).
echo '{"type":"CALL_REQUEST","to_user_id":"2"}' >&3
call_id="$(field --wait CALL_NOTIFICATION call_id "$tmp/bob.out")" ||
  fail "bob was not rung" "$tmp/bob.out" "$tmp/alice.out" "$tmp/field.err"
[[ "$call_id" =~ ^[0-9]+$ ]] || fail "bad call_id in bob's CALL_NOTIFICATION: $call_id" "$tmp/bob.out"
expect_line "$tmp/bob.out" \
  "{\"type\":\"CALL_NOTIFICATION\",\"code\":9,\"payload\":{\"call_id\":\"$call_id\",\"from_user_id\":\"1\",\"from_username\":\"alice\"}}"

# bob accepts (type by code).
echo "{\"type\":10,\"call_id\":\"$call_id\",\"accepted\":true}" >&4
expect_line "$tmp/alice.out" \
  "{\"type\":\"CALL_ACCEPTED\",\"code\":11,\"payload\":{\"call_id\":\"$call_id\",\"peer_user_id\":\"2\",\"peer_username\":\"bob\"}}"

# SDP offer and answer; the SDP carries CRLFs and quotes, escaped in JSON.
offer_sdp='v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=\"offer\"\r\n'
echo "{\"type\":\"SDP_OFFER\",\"call_id\":\"$call_id\",\"to_user_id\":\"2\",\"sdp\":\"$offer_sdp\"}" >&3
expect_line "$tmp/bob.out" \
  "{\"type\":\"SDP_OFFER\",\"code\":13,\"payload\":{\"call_id\":\"$call_id\",\"from_user_id\":\"1\",\"to_user_id\":\"2\",\"sdp\":\"$offer_sdp\"}}"
answer_sdp='v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\n'
echo "{\"type\":\"sdp_answer\",\"call_id\":\"$call_id\",\"to_user_id\":\"1\",\"sdp\":\"$answer_sdp\"}" >&4
expect_line "$tmp/alice.out" \
  "{\"type\":\"SDP_ANSWER\",\"code\":14,\"payload\":{\"call_id\":\"$call_id\",\"from_user_id\":\"2\",\"to_user_id\":\"1\",\"sdp\":\"$answer_sdp\"}}"

# ICE candidates both ways.
echo "{\"type\":\"ICE_CANDIDATE\",\"call_id\":\"$call_id\",\"candidate\":\"candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0}" >&3
expect_line "$tmp/bob.out" \
  "{\"type\":\"ICE_CANDIDATE\",\"code\":15,\"payload\":{\"call_id\":\"$call_id\",\"from_user_id\":\"1\",\"to_user_id\":\"2\",\"candidate\":\"candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0}}"
echo "{\"type\":\"0x0F\",\"call_id\":\"$call_id\",\"candidate\":\"candidate:2 1 udp 2122260223 10.0.0.2 6000 typ host\",\"sdp_mid\":\"1\",\"sdp_mline_index\":1}" >&4
expect_line "$tmp/alice.out" \
  "{\"type\":\"ICE_CANDIDATE\",\"code\":15,\"payload\":{\"call_id\":\"$call_id\",\"from_user_id\":\"2\",\"to_user_id\":\"1\",\"candidate\":\"candidate:2 1 udp 2122260223 10.0.0.2 6000 typ host\",\"sdp_mid\":\"1\",\"sdp_mline_index\":1}}"

# alice hangs up; bob gets HANGUP and his session ends (--until HANGUP).
echo "{\"type\":\"HANGUP\",\"call_id\":\"$call_id\"}" >&3
echo '{"type":"HEARTBEAT","timestamp":4242}' >&3
expect_line "$tmp/bob.out" "{\"type\":\"HANGUP\",\"code\":16,\"payload\":{\"call_id\":\"$call_id\"}}"
code="$(wait_exit "$bob_pid" 10)" || fail "bob's session did not end after HANGUP" "$tmp/bob.out" "$tmp/bob.err"
[[ "$code" == 0 ]] || fail "bob's session: exit code $code, expected 0" "$tmp/bob.out" "$tmp/bob.err"
pass
code="$(wait_exit "$alice_pid" 10)" || fail "alice's session did not end after HEARTBEAT" "$tmp/alice.out" "$tmp/alice.err"
[[ "$code" == 0 ]] || fail "alice's session: exit code $code, expected 0" "$tmp/alice.out" "$tmp/alice.err"
grep -q '"type":"HEARTBEAT","code":17,"payload":{"timestamp":4242,' "$tmp/alice.out" ||
  fail "alice's last HEARTBEAT was not answered" "$tmp/alice.out"
pass
for who in alice bob; do
  if grep -q '"type":"ERROR"' "$tmp/$who.out"; then
    fail "$who received an ERROR during the call" "$tmp/$who.out"
  fi
  [[ ! -s "$tmp/$who.err" ]] || fail "$who's session wrote to stderr" "$tmp/$who.err"
done
pass

# A bad line ends a session with exit code 2.
code=0
echo 'CALL_REQUEST 2' | "$cli_bin" --addr "$addr" --timeout 10 session --username alice \
  --password-file "$tmp/alice.pw" --until HANGUP >"$tmp/bad-line.out" 2>"$tmp/bad-line.err" || code=$?
[[ "$code" == 2 ]] || fail "a bad session line: exit code $code, expected 2" "$tmp/bad-line.out" "$tmp/bad-line.err"
grep -qF "input line 1: not JSON" "$tmp/bad-line.err" || fail "a bad session line: no reason" "$tmp/bad-line.err"
pass

# --- protocol 2: session tokens, RESUME, the fallback to the password, guests
token_file="$tmp/alice.token"
# login --token-file keeps the token (mode 0600) and does not log out: a LOGOUT
# would revoke it.
cli login-token login --username alice --password-file "$tmp/alice.pw" --token-file "$token_file"
expect_run login-token 0 "logged in user_id=1 username=alice"
[[ "$(stat -c %a "$token_file")" == 600 ]] || fail "the token file's mode is $(stat -c %a "$token_file"), not 600"
grep -qF '"username":"alice"' "$token_file" || fail "the token file does not name alice" "$token_file"
pass

# No password anywhere: only the token can log alice in (RESUME); the file then
# holds the token the RESUME handed out.
cli resume session --token-file "$token_file" --until LOGIN_RESPONSE
expect_code resume 0
[[ ! -s "$tmp/resume.err" ]] || fail "the RESUME wrote to stderr" "$tmp/resume.err"
[[ "$(field LOGIN_RESPONSE username "$tmp/resume.out")" == alice ]] || fail "RESUME: not alice" "$tmp/resume.out"
token="$(field LOGIN_RESPONSE session_token "$tmp/resume.out")" || fail "RESUME: no token" "$tmp/resume.out"
grep -qF "\"session_token\":\"$token\"" "$token_file" || fail "the file lacks the RESUME's token" "$token_file"
pass

# TOKEN_REFRESH in a session: the file gets the new token before its line prints.
echo '{"type":"TOKEN_REFRESH_REQUEST","req_id":"r1"}' |
  "$cli_bin" --addr "$addr" --timeout 10 session --token-file "$token_file" --until TOKEN_REFRESH_RESPONSE \
    >"$tmp/refresh.out" 2>"$tmp/refresh.err" || fail "TOKEN_REFRESH session failed" "$tmp/refresh.out" "$tmp/refresh.err"
refreshed="$(field --where req_id=r1 TOKEN_REFRESH_RESPONSE session_token "$tmp/refresh.out")" ||
  fail "no TOKEN_REFRESH_RESPONSE" "$tmp/refresh.out" "$tmp/field.err"
grep -qF "\"session_token\":\"$refreshed\"" "$token_file" || fail "the file lacks the refreshed token" "$token_file"
pass

cli users-token users --token-file "$token_file"
expect_run users-token 0 "$(printf '1\talice\tAvailable\n2\tbob\tDisconnected')"

# login without a token file logs out, revoking every token of alice: the next
# RESUME gets 401, and the CLI falls back to the password, saying so on stderr.
cli revoke login --username alice --password-file "$tmp/alice.pw"
expect_run revoke 0 "logged in user_id=1 username=alice"
cli fallback session --token-file "$token_file" --password-file "$tmp/alice.pw" --until LOGIN_RESPONSE
expect_code fallback 0
expect_stderr fallback "was refused (401 session token revoked); logging in with the password"
[[ "$(field LOGIN_RESPONSE success "$tmp/fallback.out")" == true ]] || fail "fallback: no login" "$tmp/fallback.out"
if grep -q '"type":"ERROR"' "$tmp/fallback.out"; then
  fail "fallback: the refused RESUME's ERROR was printed" "$tmp/fallback.out"
fi
pass
cli revoke-again login --username alice --password-file "$tmp/alice.pw"
expect_code revoke-again 0
cli no-fallback session --token-file "$token_file" --until LOGIN_RESPONSE
expect_code no-fallback 1
expect_stderr no-fallback "no password was given to fall back on"
[[ "$(field ERROR code "$tmp/no-fallback.out")" == 401 ]] || fail "no ERROR 401 line" "$tmp/no-fallback.out"
pass

# A guest needs no account; --protocol 1 speaks v1 (no WELCOME, no token).
cli guest session --guest visitor --until LOGIN_RESPONSE
expect_code guest 0
[[ "$(field LOGIN_RESPONSE username "$tmp/guest.out")" == "visitor (guest)" ]] || fail "guest: wrong name" "$tmp/guest.out"
pass
cli v1 --protocol 1 session --username bob --password-file "$tmp/bob.pw" --until LOGIN_RESPONSE
expect_run v1 0 '{"type":"LOGIN_RESPONSE","code":2,"payload":{"success":true,"user_id":"2","username":"bob"}}'

# field: no such line is exit 1.
code=0
field HANGUP call_id "$tmp/v1.out" >/dev/null || code=$?
[[ "$code" == 1 ]] || fail "field without a match: exit code $code, expected 1" "$tmp/field.err"
pass

echo "test_server.sh: $passed passed, 0 failed"
