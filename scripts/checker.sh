#!/usr/bin/env bash
# History checker (issue 25): builds the server with the redis and store features and
# examples/checker.rs, then runs the checker, which starts on loopback one redis-server, the
# nodes (real processes, each behind a TCP proxy to Redis that can blackhole the link) and the
# clients, or with --store one node with durable history (--data-dir) and no Redis, injects
# faults and checks the recorded history. Arguments go to the checker:
#
#   scripts/checker.sh                                   # 180 s, every fault kind, 2 nodes
#   scripts/checker.sh --duration 60 --faults rollback --seed 7
#   scripts/checker.sh --duration 1800 --nodes 3 --faults all
#   scripts/checker.sh --store --duration 120 --seed 2          # node-kill, node-freeze
#   PROFILE=release scripts/checker.sh ...               # a release build of the server
#
# Faults: aof-always, aof-everysec, rollback, flush, node-kill, node-freeze, link-cut (or all,
# none); with --store only node-kill and node-freeze. Exit status: 0 no violation, 1 violations (counts and examples printed, run directory
# kept with every node's and Redis's log and the clients' history), 2 usage, 3 the cluster did
# not recover. See docs/scale-out.md#history-checker.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ " $* " != *" --store "* ]] && ! command -v redis-server >/dev/null 2>&1; then
  echo "checker: redis-server is not installed (apt-get install redis-server)" >&2
  exit 2
fi
PROFILE=${PROFILE:-debug}
if [ "$PROFILE" = release ]; then
  cargo build --release --features redis,store --bin smolchat --example checker
else
  cargo build --features redis,store --bin smolchat --example checker
fi
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--duration 180 --faults all)
fi
exec "target/$PROFILE/examples/checker" --bin "target/$PROFILE/smolchat" "${args[@]}"
