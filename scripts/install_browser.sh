#!/usr/bin/env sh
# Chromium for the browser tests (Playwright drives it; no `playwright install`). Idempotent: `make test`
# and .ci/run call it every time. Where it cannot install (not root, no apt-get) it says so and exits 0:
# the browser tests then refuse to start with one line saying what to install.
set -e
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium
  exit 0
fi
echo "install_browser.sh: Chromium is not installed and cannot be installed here (needs root and apt-get);" \
  "install it (e.g. sudo apt-get install chromium) for the browser tests" >&2
