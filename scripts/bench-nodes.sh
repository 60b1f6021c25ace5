#!/usr/bin/env bash
# Scale-out benchmark: the same fan-out load against one node, then against two nodes that
# share the room through Redis (clients split evenly across the nodes). Prints one JSON line
# per row (examples/bench_nodes.rs). Everything runs on this machine, on loopback.
#
#   scripts/bench-nodes.sh                       # 200 clients, 10 senders x 50 msg/s, 10 s
#   CLIENTS=400 RATE=25 scripts/bench-nodes.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-200}
SENDERS=${SENDERS:-10}
RATE=${RATE:-50}
DURATION=${DURATION:-10}
REDIS_PORT=${REDIS_PORT:-26379}

cargo build --release --features redis --bin smolchat --example bench_nodes
bin=target/release/smolchat
gen=target/release/examples/bench_nodes
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_healthy() { # host port
  for _ in $(seq 1 200); do
    if { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null; then
      printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' >&3
      if head -c 12 <&3 | grep -q 200; then exec 3>&-; return 0; fi
      exec 3>&-
    fi
    sleep 0.05
  done
  echo "node on port $2 never became healthy" >&2; return 1
}

load() { "$gen" --addr "$1" --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --duration "$DURATION"; }
flags=(--rate-limit 0 --log-level warn --max-connections 20000)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
sleep 0.3

"$bin" --listen 127.0.0.1:28080 "${flags[@]}" & pids+=($!)
wait_healthy 127.0.0.1 28080
echo "single node:"
load 127.0.0.1:28080
kill "${pids[-1]}"

url="redis://127.0.0.1:$REDIS_PORT/"
"$bin" --listen 127.0.0.1:28081 --redis "$url" "${flags[@]}" & pids+=($!)
"$bin" --listen 127.0.0.1:28082 --redis "$url" "${flags[@]}" & pids+=($!)
wait_healthy 127.0.0.1 28081
wait_healthy 127.0.0.1 28082
echo "two nodes through Redis:"
load 127.0.0.1:28081,127.0.0.1:28082
