#!/usr/bin/env bash
# Browser test of the built-in web client (tests/browser/): installs Debian's Chromium and
# openssl if they are missing, installs the pinned playwright-core, builds the server with the
# `tls` feature (one binary for plain http/ws and for https/wss) and runs the test, which
# starts the server binary itself and makes its own self-signed certificate with openssl.
# Screenshots, the certificate and the servers' logs land in target/browser/.
#
# Environment: SMOLCHAT_BIN picks the binary (default target/debug/smolchat; a path under
# target/release/ builds with --release), CHROMIUM the browser (default /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
MISSING=()
if [ ! -x "$CHROMIUM" ]; then MISSING+=(chromium); fi
if ! command -v openssl >/dev/null; then MISSING+=(openssl); fi
if [ ${#MISSING[@]} -gt 0 ]; then
  echo "== installing ${MISSING[*]} (apt-get)"
  SUDO=
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${MISSING[@]}"
fi

echo "== npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund)

export SMOLCHAT_BIN=${SMOLCHAT_BIN:-target/debug/smolchat}
echo "== cargo build --features tls"
case "$SMOLCHAT_BIN" in
  *target/release/*) cargo build --release --features tls ;;
  *) cargo build --features tls ;;
esac

echo "== browser test"
CHROMIUM="$CHROMIUM" node tests/browser/browser.test.mjs
