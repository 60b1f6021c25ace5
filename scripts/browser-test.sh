#!/usr/bin/env bash
# Browser test of the built-in web client (tests/browser/): installs Debian's Chromium if it is
# missing, installs the pinned playwright-core, builds the server and runs the test, which
# starts the server binary itself. Screenshots and the server's log land in target/browser/.
#
# Environment: SMOLCHAT_BIN picks the binary (default target/debug/smolchat; a path under
# target/release/ builds with --release), CHROMIUM the browser (default /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  echo "== installing chromium (apt-get)"
  SUDO=
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q chromium
fi

echo "== npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund)

export SMOLCHAT_BIN=${SMOLCHAT_BIN:-target/debug/smolchat}
echo "== cargo build"
case "$SMOLCHAT_BIN" in
  *target/release/*) cargo build --release ;;
  *) cargo build ;;
esac

echo "== browser test"
CHROMIUM="$CHROMIUM" node tests/browser/browser.test.mjs
