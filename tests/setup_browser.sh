#!/usr/bin/env bash
# Installs what tests/test_report.py's browser test needs: Chromium and its driver (Debian
# packages: /usr/bin/chromium, /usr/bin/chromedriver). Idempotent: does nothing when both are on
# PATH. Needs root (or sudo) and a network the first time; selenium itself comes from the
# project's `test` extra (pip).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup_browser.sh: need root or sudo to apt-get install chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver
