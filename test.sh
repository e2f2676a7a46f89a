#!/usr/bin/env bash
# The whole test suite. Installs what it needs: the venv, and Debian's chromium for
# the browser test of the demo notebook (only as root, where apt-get is available).
# Usage: bash test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[updetr-lite] installing Debian's chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[updetr-lite] could not install chromium: the browser test will report a skip"
fi
ruff check .
exec python -m pytest "$@"
