#!/usr/bin/env bash
# Install modelhaul with its test tools and run every check CI runs: ruff (lint and
# format), mypy --strict on the package, and the test suite against a real SeaweedFS
# that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
# Headless Chromium checks serve's status page (tests skip without it). Best effort: a
# machine without apt (or without root) still runs everything else.
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium not installed: the status-page test will be skipped" >&2
# nftables drops packets for the weak-link test (tests/test_weak_link.py; it skips
# without it). Best effort, like chromium.
command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables >/dev/null) \
    || echo "nftables not installed: the weak-link test will be skipped" >&2
# libfaketime runs a client whose clock is wrong, for the clock-skew tests
# (tests/test_clock_skew.py; they skip without it). Best effort, like chromium.
command -v faketime >/dev/null || (apt-get update -qq && apt-get install -y -qq faketime >/dev/null) \
    || echo "faketime not installed: the clock-skew tests will be skipped" >&2
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
