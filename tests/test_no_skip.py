"""Under CI (MODELHAUL_NO_SKIP=1) a skipped test fails the run and the summary says why; a
test deselected by a marker is not a skip. Runs pytest on a small test file in a child,
with this suite's conftest as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAMPLE = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("no frobnicator on this machine")

@pytest.fixture
def root():
    pytest.skip("needs root")

def test_needs_root(root):
    pass

@pytest.mark.soak
def test_long():
    pass
"""


def _pytest(tmp: Path, no_skip: str | None) -> subprocess.CompletedProcess[str]:
    (tmp / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "MODELHAUL_NO_SKIP"}
    if no_skip is not None:
        env["MODELHAUL_NO_SKIP"] = no_skip
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(repo)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull,
         "--rootdir", str(tmp), "-m", "not soak", "-o", "markers=soak", "-p", "no:cacheprovider",
         str(tmp / "test_sample.py")],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_skips_fail_the_run_under_no_skip(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout
    section = proc.stdout.split("skips (failures: MODELHAUL_NO_SKIP=1)", 1)[1]
    listed = section.split("\n", 1)[1].split("\n=", 1)[0].splitlines()
    assert listed == [
        "test_sample.py::test_needs_a_tool: no frobnicator on this machine",
        "test_sample.py::test_needs_root: needs root",
    ], proc.stdout
    # The soak test is deselected, not skipped: it is no failure.
    assert "1 failed, 1 passed, 1 deselected, 1 error" in proc.stdout


def test_skips_are_skips_elsewhere(tmp_path: Path) -> None:
    for value in (None, "0"):
        proc = _pytest(tmp_path, value)
        assert proc.returncode == 0, proc.stdout
        assert "1 passed, 2 skipped, 1 deselected" in proc.stdout
        assert "MODELHAUL_NO_SKIP" not in proc.stdout
