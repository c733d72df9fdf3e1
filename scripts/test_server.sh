#!/usr/bin/env bash
# End-to-end test of the built binaries: starts the daemon on a free port and
# drives it with switchboard-cli the way a shell script would: register, login,
# users, ping, exit codes, then a whole call between two `session` processes fed
# through named pipes, then protocol 2: a token file, RESUME, TOKEN_REFRESH, the
# fallback to the password, a guest, and --protocol 1, then a 3-party room
# (password, the offer/answer/ICE mesh in the order the server assigns, chat,
# history, leave). Values come out of the sessions' output with
# `switchboard-cli field`, or into a session's next line with {{REQ_ID.PATH}}.
# Needs bash, grep, sed and stat.
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
  exec 3>&- 4>&- 5>&- 6>&- 7>&-
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

# --- a 3-party room: alice creates it with a password, bob and carol join with
# it; every pair opens its connection with exactly one offer (the joiner offers to
# those already in: create_offer), answer and ICE both ways; chat, history, leave.
# Three sessions fed through named pipes (fds 5, 6, 7), each ending with its
# ROOM_LEAVE_RESPONSE.
cli register-carol register --username carol --password-file "$tmp/alice.pw"
expect_run register-carol 0 "registered user_id=3 username=carol"
mkfifo "$tmp/r-alice.in" "$tmp/r-bob.in" "$tmp/r-carol.in"
exec 5<>"$tmp/r-alice.in" 6<>"$tmp/r-bob.in" 7<>"$tmp/r-carol.in"
declare -A room_fd=([alice]=5 [bob]=6 [carol]=7) room_id_of=([alice]=1 [bob]=2 [carol]=3)
room_pid=()
for who in alice bob carol; do
  pw="$tmp/alice.pw"
  [[ "$who" == bob ]] && pw="$tmp/bob.pw"
  "$cli_bin" --addr "$addr" --timeout 60 session --username "$who" --password-file "$pw" \
    --until ROOM_LEAVE_RESPONSE <"$tmp/r-$who.in" >"$tmp/r-$who.out" 2>"$tmp/r-$who.err" \
    3>&- 4>&- 5>&- 6>&- 7>&- &
  room_pid+=("$!")
  pids+=("$!")
  expect_field "$tmp/r-$who.out" LOGIN_RESPONSE user_id "${room_id_of[$who]}"
done
# say WHO LINE: one command on WHO's session.
say() {
  echo "$2" >&"${room_fd[$1]}"
}

# alice creates the room and joins it in one go: the join names the create's answer.
say alice '{"type":"ROOM_CREATE_REQUEST","name":"Weekly sync","password":"room-pw","req_id":"create"}'
say alice '{"type":"ROOM_JOIN_REQUEST","room_id":"{{create.room_id}}","req_id":"join"}'
room_id="$(field --wait --where req_id=create ROOM_CREATE_RESPONSE room_id "$tmp/r-alice.out")" ||
  fail "alice's room was not created" "$tmp/r-alice.out" "$tmp/r-alice.err"
[[ "$room_id" =~ ^[0-9]+$ ]] || fail "bad room_id: $room_id" "$tmp/r-alice.out"
[[ "$(field --wait --where req_id=create ROOM_CREATE_RESPONSE room.has_password "$tmp/r-alice.out")" == true ]] ||
  fail "the room has no password" "$tmp/r-alice.out"
[[ "$(field --wait --where req_id=join ROOM_JOIN_RESPONSE participants "$tmp/r-alice.out")" == "[]" ]] ||
  fail "alice did not join an empty room" "$tmp/r-alice.out" "$tmp/r-alice.err"
pass

# A wrong password is refused (401); the session goes on.
say bob "{\"type\":\"ROOM_JOIN_REQUEST\",\"room_id\":$room_id,\"password\":\"guess\",\"req_id\":\"bad\"}"
[[ "$(field --wait --where req_id=bad ERROR code "$tmp/r-bob.out")" == 401 ]] ||
  fail "a wrong room password was not refused with 401" "$tmp/r-bob.out"
pass

sdp_of() { # sdp_of KIND FROM TO: an SDP body naming who sent it to whom
  echo "v=0\\r\\no=$2 1 1 IN IP4 127.0.0.1\\r\\ns=$1 $2 to $3\\r\\n"
}
# mesh_join WHO: WHO joins with the password, checks that it must offer to
# everyone already in (and that each of them was told to wait), and opens each
# pair: offer, answer, one ICE candidate each way, every relayed frame checked
# whole (stamped with from_user_id).
mesh_join() {
  local who="$1" me="${room_id_of[$1]}" n i peer peer_id offer answer cand
  say "$who" "{\"type\":\"ROOM_JOIN_REQUEST\",\"room_id\":\"$room_id\",\"password\":\"room-pw\",\"req_id\":\"join\"}"
  n="$(field --wait --where req_id=join ROOM_JOIN_RESPONSE participants "$tmp/r-$who.out")" ||
    fail "$who could not join" "$tmp/r-$who.out" "$tmp/r-$who.err"
  local expected="" sep=""
  for peer in "${@:2}"; do
    expected+="$sep{\"create_offer\":true,\"user_id\":\"${room_id_of[$peer]}\",\"username\":\"$peer\"}"
    sep=","
  done
  [[ "$n" == "[$expected]" ]] || fail "$who's ROOM_JOIN_RESPONSE participants: $n, expected [$expected]" "$tmp/r-$who.out"
  pass
  i=0
  for peer in "${@:2}"; do
    peer_id="$(field --wait --where req_id=join ROOM_JOIN_RESPONSE "participants.$i.user_id" "$tmp/r-$who.out")"
    [[ "$(field --wait --where req_id=join ROOM_JOIN_RESPONSE "participants.$i.create_offer" "$tmp/r-$who.out")" == true ]] ||
      fail "$who is not the offerer towards $peer" "$tmp/r-$who.out"
    expect_line "$tmp/r-$peer.out" \
      "{\"type\":\"ROOM_PEER_JOINED\",\"code\":40,\"payload\":{\"room_id\":\"$room_id\",\"user_id\":\"$me\",\"username\":\"$who\",\"create_offer\":false}}"
    offer="$(sdp_of offer "$who" "$peer")"
    say "$who" "{\"type\":\"SDP_OFFER\",\"room_id\":\"$room_id\",\"to_user_id\":$peer_id,\"sdp\":\"$offer\"}"
    expect_line "$tmp/r-$peer.out" \
      "{\"type\":\"SDP_OFFER\",\"code\":13,\"payload\":{\"room_id\":\"$room_id\",\"from_user_id\":\"$me\",\"to_user_id\":\"$peer_id\",\"sdp\":\"$offer\"}}"
    answer="$(sdp_of answer "$peer" "$who")"
    say "$peer" "{\"type\":\"SDP_ANSWER\",\"room_id\":\"$room_id\",\"to_user_id\":\"$me\",\"sdp\":\"$answer\"}"
    expect_line "$tmp/r-$who.out" \
      "{\"type\":\"SDP_ANSWER\",\"code\":14,\"payload\":{\"room_id\":\"$room_id\",\"from_user_id\":\"$peer_id\",\"to_user_id\":\"$me\",\"sdp\":\"$answer\"}}"
    cand="candidate:$me 1 udp 2122260223 10.0.0.$me 5000 typ host"
    say "$who" "{\"type\":\"ICE_CANDIDATE\",\"room_id\":\"$room_id\",\"to_user_id\":\"$peer_id\",\"candidate\":\"$cand\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0}"
    expect_line "$tmp/r-$peer.out" \
      "{\"type\":\"ICE_CANDIDATE\",\"code\":15,\"payload\":{\"room_id\":\"$room_id\",\"from_user_id\":\"$me\",\"to_user_id\":\"$peer_id\",\"candidate\":\"$cand\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0}}"
    cand="candidate:$peer_id 1 udp 2122260223 10.0.0.$peer_id 6000 typ host"
    say "$peer" "{\"type\":\"ICE_CANDIDATE\",\"room_id\":\"$room_id\",\"to_user_id\":\"$me\",\"candidate\":\"$cand\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0}"
    expect_line "$tmp/r-$who.out" \
      "{\"type\":\"ICE_CANDIDATE\",\"code\":15,\"payload\":{\"room_id\":\"$room_id\",\"from_user_id\":\"$peer_id\",\"to_user_id\":\"$me\",\"candidate\":\"$cand\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0}}"
    i=$((i + 1))
  done
}
mesh_join bob alice
mesh_join carol alice bob

# Exactly one offer per pair: alice got two (bob's, carol's), bob one (carol's),
# carol none; the answers went the other way.
for pair in alice:SDP_OFFER:2 bob:SDP_OFFER:1 carol:SDP_OFFER:0 alice:SDP_ANSWER:0 bob:SDP_ANSWER:1 carol:SDP_ANSWER:2; do
  IFS=: read -r who kind n <<<"$pair"
  got="$(grep -c "\"type\":\"$kind\"" "$tmp/r-$who.out" || true)"
  [[ "$got" == "$n" ]] || fail "$who received $got $kind, expected $n" "$tmp/r-$who.out"
done
pass

# Chat: one message each, in turn; everyone sees the same three in seq order.
texts=("hello from alice" "hi, bob here" "carol says hi")
i=0
for who in alice bob carol; do
  say "$who" "{\"type\":\"ROOM_MESSAGE_REQUEST\",\"room_id\":\"$room_id\",\"text\":\"${texts[$i]}\",\"req_id\":\"post\"}"
  [[ "$(field --wait --where req_id=post ROOM_MESSAGE_RESPONSE seq "$tmp/r-$who.out")" == $((i + 1)) ]] ||
    fail "$who's message did not get seq $((i + 1))" "$tmp/r-$who.out"
  i=$((i + 1))
done
for who in alice bob carol; do
  for n in 1 2 3; do
    [[ "$(field --wait --nth "$n" ROOM_MESSAGE seq "$tmp/r-$who.out")" == "$n" ]] ||
      fail "$who's ROOM_MESSAGE number $n is not seq $n" "$tmp/r-$who.out"
    [[ "$(field --wait --nth "$n" ROOM_MESSAGE text "$tmp/r-$who.out")" == "${texts[$((n - 1))]}" ]] ||
      fail "$who's ROOM_MESSAGE number $n has the wrong text" "$tmp/r-$who.out"
  done
done
[[ "$(field --wait --nth 2 ROOM_MESSAGE from_username "$tmp/r-carol.out")" == bob ]] ||
  fail "the second message is not stamped as bob's" "$tmp/r-carol.out"
pass

# History: all three, then only what came after seq 1 (the second request names the
# first one's answer).
say carol "{\"type\":\"ROOM_HISTORY_REQUEST\",\"room_id\":\"$room_id\",\"limit\":10,\"req_id\":\"hist\"}"
say carol "{\"type\":\"ROOM_HISTORY_REQUEST\",\"room_id\":\"$room_id\",\"after_seq\":\"{{hist.messages.0.seq}}\",\"req_id\":\"hist2\"}"
for n in 0 1 2; do
  [[ "$(field --wait --where req_id=hist ROOM_HISTORY_RESPONSE "messages.$n.text" "$tmp/r-carol.out")" == "${texts[$n]}" ]] ||
    fail "history message $n is not '${texts[$n]}'" "$tmp/r-carol.out"
done
[[ "$(field --wait --where req_id=hist ROOM_HISTORY_RESPONSE has_more "$tmp/r-carol.out")" == false ]] ||
  fail "the history says there is more" "$tmp/r-carol.out"
[[ "$(field --wait --where req_id=hist2 ROOM_HISTORY_RESPONSE messages "$tmp/r-carol.out" | grep -o '"seq":[0-9]*' | tr '\n' ' ')" == '"seq":2 "seq":3 ' ]] ||
  fail "the history after seq 1 is not seqs 2 and 3" "$tmp/r-carol.out"
pass

# carol leaves: the others are told; relaying to her is refused from then on.
say carol "{\"type\":\"ROOM_LEAVE_REQUEST\",\"room_id\":\"$room_id\",\"req_id\":\"leave\"}"
for who in alice bob; do
  expect_line "$tmp/r-$who.out" \
    "{\"type\":\"ROOM_PEER_LEFT\",\"code\":43,\"payload\":{\"room_id\":\"$room_id\",\"user_id\":\"3\",\"username\":\"carol\",\"reason\":\"left\"}}"
done
say bob "{\"type\":\"ICE_CANDIDATE\",\"room_id\":\"$room_id\",\"to_user_id\":3,\"candidate\":\"candidate:9 1 udp 1 10.0.0.9 9 typ host\",\"sdp_mid\":\"0\",\"sdp_mline_index\":0,\"req_id\":\"gone\"}"
[[ "$(field --wait --where req_id=gone ERROR code "$tmp/r-bob.out")" == 403 ]] ||
  fail "relaying to a participant who left was not refused with 403" "$tmp/r-bob.out"
pass
say bob "{\"type\":\"ROOM_LEAVE_REQUEST\",\"room_id\":\"$room_id\"}"
expect_line "$tmp/r-alice.out" \
  "{\"type\":\"ROOM_PEER_LEFT\",\"code\":43,\"payload\":{\"room_id\":\"$room_id\",\"user_id\":\"2\",\"username\":\"bob\",\"reason\":\"left\"}}"
say alice "{\"type\":\"ROOM_LEAVE_REQUEST\",\"room_id\":\"$room_id\"}"
i=0
for who in alice bob carol; do
  # Waited for in this shell (not in a $(...) subshell), so `wait` gets its status.
  pid="${room_pid[$i]}" tries=200
  while kill -0 "$pid" 2>/dev/null && ((tries-- > 0)); do
    sleep 0.05
  done
  ! kill -0 "$pid" 2>/dev/null || fail "$who's room session did not end" "$tmp/r-$who.out" "$tmp/r-$who.err"
  code=0
  wait "$pid" || code=$?
  [[ "$code" == 0 ]] || fail "$who's room session: exit code $code" "$tmp/r-$who.out" "$tmp/r-$who.err"
  [[ ! -s "$tmp/r-$who.err" ]] || fail "$who's room session wrote to stderr" "$tmp/r-$who.err"
  i=$((i + 1))
done
# The only ERRORs are the two provoked above (bob's wrong password and relay to carol).
[[ "$(cat "$tmp"/r-*.out | grep -c '"type":"ERROR"' || true)" == 2 ]] ||
  fail "unexpected ERRORs in the room" "$tmp/r-alice.out" "$tmp/r-bob.out" "$tmp/r-carol.out"
pass

echo "test_server.sh: $passed passed, 0 failed"
