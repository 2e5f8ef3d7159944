#!/usr/bin/env sh
# Chromium for the browser tests (Playwright drives /usr/bin/chromium; no `playwright install`). Idempotent.
set -e
command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)
