#!/usr/bin/env bash
# Checks examples/embed_tokio.rs as a user would run it: starts
# `cargo run --example embed_tokio -- --listen 127.0.0.1:0`, reads the address it prints,
# connects a WebSocket client, expects `welcome` and `room`, says something and gets it back,
# then sends the server SIGINT (its Ctrl-C) and expects close 1001 on the client and exit
# status 0 from the server. Anything else, or any step taking longer than its deadline, fails.
#
# Needs only cargo and python3 (the client, scripts/ws_check.py, is Python's standard library).
# Output and the server's log land in target/embed-tokio-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/embed-tokio-check
mkdir -p "$out"
rm -f "$out/stdout" "$out/stderr"

echo "== cargo build --example embed_tokio"
cargo build --example embed_tokio

echo "== starting the example"
cargo run --quiet --example embed_tokio -- --listen 127.0.0.1:0 >"$out/stdout" 2>"$out/stderr" &
pid=$!
# `cargo run` replaces itself with the example on Unix, so $pid is the server's own pid; the
# trap also covers the case where it is not.
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    pkill -KILL -P "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

fail() {
  echo "embed-tokio-check: FAILED: $*" >&2
  echo "--- server stdout" >&2; cat "$out/stdout" >&2 || true
  echo "--- server stderr" >&2; cat "$out/stderr" >&2 || true
  exit 1
}

addr=
for _ in $(seq 300); do # up to 30 s
  addr=$(sed -n 's/^listening on \(.*\)$/\1/p' "$out/stdout" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || fail "the example exited before printing its address"
  sleep 0.1
done
[ -n "$addr" ] || fail "no 'listening on ADDR' line within 30 s"
echo "   listening on $addr (pid $pid)"

echo "== WebSocket client"
python3 scripts/ws_check.py "$addr" "$pid" SIGINT || fail "the WebSocket client check failed"

echo "== waiting for the example to exit"
for _ in $(seq 100); do # up to 10 s
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "the example did not exit within 10 s of SIGINT"
status=0
wait "$pid" || status=$?
[ "$status" = 0 ] || fail "the example exited with status $status"
trap - EXIT
echo "embed-tokio-check: ok"
