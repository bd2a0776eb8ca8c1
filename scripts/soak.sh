#!/usr/bin/env bash
# The long fault suite: SIGKILL 20 times per operation (cp both ways, push, pull), the
# hostile-network proxy on every transfer kind, 256 MiB each way over a weak link (veth
# between two network namespaces, tc tbf 20 Mbit/s, nftables 1% loss), races, and every
# bad input; then the figures that docs/RELIABILITY.md quotes. About 15 minutes.
#
#   bash scripts/soak.sh                 # everything
#   bash scripts/soak.sh -k kills        # a part of it (any pytest arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
export RELIABILITY_LOG="${RELIABILITY_LOG:-$(mktemp /tmp/modelhaul-soak.XXXXXX.jsonl)}"
echo "figures: $RELIABILITY_LOG" >&2
status=0
.venv/bin/pytest -m "soak or not soak" --timeout 1800 \
    tests/test_kills.py tests/test_hostile_network.py \
    tests/test_weak_link.py tests/test_races.py tests/test_bad_input.py "$@" || status=$?
.venv/bin/python -m tests.reliability "$RELIABILITY_LOG"
exit "$status"
