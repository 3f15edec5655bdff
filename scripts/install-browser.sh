#!/usr/bin/env bash
# Debian's Chromium for the status pages' browser tests (tests/integration/test_web_pages.py),
# installed from the distribution's packages when absent: the tests never download a browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing Debian's chromium (for the browser tests)"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
