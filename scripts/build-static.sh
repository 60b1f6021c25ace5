#!/usr/bin/env bash
# Builds a fully static x86_64 Linux binary of smolchat: the size-first `min` profile, glibc's
# static libraries (crt-static) and a non-PIE executable. The explicit --target is required:
# without it RUSTFLAGS would also apply to build scripts and proc macros, which must stay
# dynamic. The result runs on any x86_64 Linux, no Rust toolchain or libc needed.
#
# Usage: scripts/build-static.sh            -> prints the path of the binary
#        PROFILE=release scripts/build-static.sh   (speed-first instead)
#        FEATURES=tls scripts/build-static.sh      (with TLS; built under target/tls/)
#        LEAN=1 scripts/build-static.sh            (without the default auth and api features:
#                                                   the smallest gateway build; under target/lean/)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-min}
target=x86_64-unknown-linux-gnu
features=()
dir=target
if [ -n "${FEATURES:-}" ]; then
  features=(--features "$FEATURES")
  dir=target/${FEATURES//,/-}
fi
if [ -n "${LEAN:-}" ]; then
  features=(--no-default-features --features "smol${FEATURES:+,$FEATURES}")
  dir=target/lean
fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  CARGO_TARGET_DIR=$dir cargo build --locked --profile "$profile" --target "$target" \
  --bin smolchat "${features[@]}" >&2
echo "$dir/$target/$profile/smolchat"
