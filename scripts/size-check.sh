#!/usr/bin/env bash
# Size budgets, checked in CI: builds the static binary (scripts/build-static.sh, `min`
# profile) and the ordinary dynamic binaries, prints every size, and fails naming the budget
# that was overrun. The web client is embedded in every one of them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The budgets, in bytes.
# Raised again on 2026-12-02 (issue 12, one hub): the authority interface, the in-memory
# authority and the hub's handling of answers that come later are in every build: +23 KB
# static and `min`, +42 KB `release`, measured. See README "On a gateway".
# Raised again on 2026-12-02 (issue 14) for the default features `auth` and `api` (tokens
# with hmac and sha2, the HTTP API): +84 KB static, +86 KB `min`, +110 KB `release`, measured
# against the same build without them (the LEAN budgets below, which hold the build without
# them to what the default build was allowed before, plus 16 KB for what every build carries
# now: users with several connections, the authority's publish and history, the page's token
# handling). See README "On a gateway".
STATIC_BUDGET=1700000        # static x86_64 binary, size-first profile (1,688,000 measured)
# Raised from 720,000 and 880,000 on 2026-12-02 by the hostile-client protections (metered
# streams, byte-bounded queues and history, Host check, limits per address; +18 KB of code)
# and the paced web client (+3 KB): +28 KB in all, measured. See README "On a gateway".
DYNAMIC_MIN_BUDGET=870000    # dynamic binary, size-first profile (861,008 measured)
# Without the default `auth` and `api` features (`--no-default-features --features smol`): the
# smallest gateway build.
STATIC_LEAN_BUDGET=1625000    # (1,620,376 measured)
DYNAMIC_LEAN_BUDGET=795000    # (791,248 measured)
# Raised on 2026-12-07 by issue 27 (the writer frames its own messages, src/wire.rs): +4,952
# bytes in the release build, measured with symbols at 1ec4b6e and f8a00a2 (`nm --size-sort`:
# wire 11,012 bytes of new code, minus async-tungstenite's sink and futures-util's Feed, 6,060,
# no longer used). Tried to offset it: issue 23's front door (-6 KB of handshake, config and
# metrics code in the same build), SHA-1/SHA-256 at opt-level "s" (-512, kept, Cargo.toml),
# one copy of Hub::new_epoch (+256, dropped). The static and `min` budgets are not raised.
DYNAMIC_RELEASE_BUDGET=1089952 # dynamic binary, speed-first release profile (1,089,488 measured)
STATIC_TLS_BUDGET=2545000     # static, size-first, with the tls feature (2,534,000 measured)
DYNAMIC_TLS_BUDGET=1740000    # dynamic, size-first, with the tls feature (1,731,000 measured)
# Issue 24 (durable history, `--data-dir`): the store feature (redb, off by default) adds
# what it measures against the default static build; see docs/durability.md.
STATIC_STORE_BUDGET=2390000   # static, size-first, with the store feature (2,376,088 measured at c36a3f6: +689,536 over the default static build, 1,686,552; redb and its use)

static=$(scripts/build-static.sh)
static_lean=$(LEAN=1 scripts/build-static.sh)
static_tls=$(FEATURES=tls scripts/build-static.sh)
static_store=$(FEATURES=store scripts/build-static.sh)
cargo build --locked --release --bin smolchat >&2
cargo build --locked --profile min --bin smolchat >&2
CARGO_TARGET_DIR=target/lean cargo build --locked --profile min --bin smolchat \
  --no-default-features --features smol >&2
CARGO_TARGET_DIR=target/tls cargo build --locked --profile min --bin smolchat --features tls >&2

size_of() { stat -c %s "$1"; }
fail=0
check() { # name path budget
  local size; size=$(size_of "$2")
  printf '%-34s %9d bytes  (budget %9d)  %s\n' "$1" "$size" "$3" "$2"
  if [ "$size" -gt "$3" ]; then
    echo "SIZE BUDGET EXCEEDED: $1 is $size bytes, over its budget of $3 bytes by $((size - $3))" >&2
    fail=1
  fi
}
check "static (min profile)" "$static" $STATIC_BUDGET
check "static, no auth/api (min profile)" "$static_lean" $STATIC_LEAN_BUDGET
check "dynamic (min profile)" target/min/smolchat $DYNAMIC_MIN_BUDGET
check "dynamic, no auth/api (min profile)" target/lean/min/smolchat $DYNAMIC_LEAN_BUDGET
check "dynamic (release profile)" target/release/smolchat $DYNAMIC_RELEASE_BUDGET
check "static, tls (min profile)" "$static_tls" $STATIC_TLS_BUDGET
check "dynamic, tls (min profile)" target/tls/min/smolchat $DYNAMIC_TLS_BUDGET
check "static, store (min profile)" "$static_store" $STATIC_STORE_BUDGET
if ! command -v file >/dev/null 2>&1; then # not on every fresh machine
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq file >/dev/null
fi
file "$static"
file "$static" | grep -q "statically linked" || { echo "$static is not statically linked" >&2; fail=1; }
"$static" --version
exit $fail
