#!/usr/bin/env bash
# Install modelhaul with its test tools and run every check CI runs: ruff (lint and
# format), mypy --strict on the package, and the test suite against a real SeaweedFS
# that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
# Some tests need system tools: headless Chromium renders serve's status page, faketime
# skews a client's clock (tests/test_clock_skew.py)
# (tests/test_serve.py); nftables and iproute2 (ip, tc) build the weak link
# (tests/test_weak_link.py), which also needs root, as do the tmpfs disk-full tests. Those
# tests skip, saying why, where a tool is missing. Under CI (MODELHAUL_NO_SKIP=1, which
# .ci/run sets) every test must run: a tool that cannot be installed stops here, and any
# test that still skips fails the run (tests/conftest.py).
if [ -n "${CI:-}" ]; then
    export MODELHAUL_NO_SKIP="${MODELHAUL_NO_SKIP:-1}"
fi
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v nft >/dev/null || missing+=(nftables)
{ command -v ip >/dev/null && command -v tc >/dev/null; } || missing+=(iproute2)
# libfaketime runs a client whose clock is wrong (tests/test_clock_skew.py)
command -v faketime >/dev/null || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
    if ! (apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null); then
        if [ "${MODELHAUL_NO_SKIP:-}" = 1 ]; then
            echo "could not install ${missing[*]} (needs apt and root); MODELHAUL_NO_SKIP=1" \
                "forbids skipping the tests that need them" >&2
            exit 1
        fi
        echo "${missing[*]} not installed: the tests that need them will be skipped" >&2
    fi
fi
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
