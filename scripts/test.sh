#!/usr/bin/env bash
# The README's test command: the browser the tests drive (scripts/install-browser.sh), a virtual
# environment with the test extra, then pytest (arguments are passed on, e.g. `-m db`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-browser.sh
python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest "$@"
