"""Shared fixtures: one real SeaweedFS per test session, started by modelhaul's own code on
127.0.0.1 and free ports, stopped by pid; and an isolated environment for every test (no
user config, no real home, no real cache, credentials pointing at that server)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store, load_profile
from modelhaul._store.cluster import ClusterServer, start_cluster, stop_cluster

ACCESS_KEY = "mhtestaccesskey"
SECRET_KEY = "mh-test-secret-0123456789abcdefXYZ"
_counter = itertools.count()
# CI sets this (scripts/test.sh, .ci/run): there every test must run, so a skip (no
# chromium, nftables, root, torch...) fails the run instead of passing unseen.
NO_SKIP = os.environ.get("MODELHAUL_NO_SKIP") == "1"
_forbidden_skips: list[tuple[str, str]] = []


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that names its reason."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    _forbidden_skips.append((report.nodeid, reason))
    report.outcome = "failed"
    report.longrepr = f"skipped, and MODELHAUL_NO_SKIP=1 forbids skips: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    # A module-level skip (pytest.importorskip("torch")) happens while collecting.
    report = yield
    if NO_SKIP and report.skipped:
        _as_failure(report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _forbidden_skips:
        terminalreporter.section("skips (failures: MODELHAUL_NO_SKIP=1)", red=True)
        for nodeid, reason in _forbidden_skips:
            terminalreporter.line(f"{nodeid}: {reason}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    data = tmp_path_factory.mktemp("seaweedfs")
    srv = modelhaul.start_server(
        data, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, buckets=["shared-bucket"]
    )
    try:
        yield srv
    finally:
        modelhaul.stop_server(data)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServer]:
    """SeaweedFS as a real deployment runs it: master, two volume servers, filer and S3
    gateway as separate processes (replication 001: each chunk on both volume servers)."""
    data = tmp_path_factory.mktemp("cluster")
    srv = start_cluster(data, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    try:
        yield srv
    finally:
        stop_cluster(data)


@pytest.fixture
def env(server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Isolate the test from the user's machine and point it at the test server."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "MODELHAUL_", "HF_")):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    return dict(os.environ)


@pytest.fixture
def store(env: dict[str, str]) -> S3Store:
    return S3Store(load_profile())


@pytest.fixture
def bucket(store: S3Store) -> str:
    """A fresh, empty bucket for one test."""
    name = f"t{os.getpid()}-{next(_counter)}"
    store.client().create_bucket(Bucket=name)
    return name


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (not compressible, reproducible)."""
    import random

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 1 << 20)
            fh.write(rng.randbytes(n))
            left -= n
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real ``modelhaul`` command in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "modelhaul", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"modelhaul {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
