#!/usr/bin/env bash
# Smoke test of the static binary as a gateway user would run it: start it on a free loopback
# port, connect a WebSocket client, exchange a message, stop it with SIGTERM, and expect close
# 1001 on the client, the log line naming the signal, and exit status 0. Usage: scripts/static-smoke.sh [BINARY] [--tls]
# With --tls (a binary built with the tls feature) it makes a self-signed certificate with
# openssl and does the same over wss.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-$(scripts/build-static.sh)}
out=target/static-smoke
mkdir -p "$out"

args=()
if [ "${2:-}" = --tls ]; then
  command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
  args=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
  export WS_CHECK_CA=$out/cert.pem
fi

"$bin" --listen 127.0.0.1:0 "${args[@]}" 2>"$out/stderr" &
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true' EXIT
fail() { echo "static-smoke: FAILED: $*" >&2; cat "$out/stderr" >&2; exit 1; }

addr=
for _ in $(seq 100); do # up to 10 s
  addr=$(sed -n 's/.*listening on \([0-9.:]*\) .*/\1/p' "$out/stderr" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || fail "the server exited at start"
  sleep 0.1
done
[ -n "$addr" ] || fail "no 'listening on' line within 10 s"
echo "== $bin listening on $addr"
python3 scripts/ws_check.py "$addr" "$pid" SIGTERM || fail "the WebSocket check failed"
status=0
wait "$pid" || status=$?
[ "$status" = 0 ] || fail "exited with status $status after SIGTERM"
grep -q "SIGTERM: shutting down" "$out/stderr" || fail "no 'SIGTERM: shutting down' log line"
trap - EXIT
echo "static-smoke: ok"
