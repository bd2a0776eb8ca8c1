#!/usr/bin/env bash
# Install modelhaul with its embedded store and run the demo: start SeaweedFS on
# 127.0.0.1, push and pull a sample model with progress bars, print MB/s, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[server]'
exec .venv/bin/modelhaul demo "$@"
