"""Ctrl-C on a real ``modelhaul cp`` child process: it stops within a few seconds, exits
130 with the resume message, and the rerun resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import modelhaul
from modelhaul import EmbeddedServer
from modelhaul._transfer.engine import CANCEL_GRACE
from tests.conftest import make_file, run_cli
from tests.faultproxy import Fault, FaultProxy

MiB = 1024 * 1024
SIZE = 32 * MiB  # under the direct-I/O threshold: plain writes
RESUME = "interrupted: run the same command again to resume"


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelhaul", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wrote(proc: subprocess.Popen[str], n: int) -> Callable[[], bool]:
    """Whether the child has written ``n`` bytes (``wchar`` of /proc/PID/io): a first
    chunk of the download is in its partial file, so there is something to resume."""

    def check() -> bool:
        try:
            text = Path(f"/proc/{proc.pid}/io").read_text()
        except OSError:
            return False
        return int(text.split("wchar:")[1].split()[0]) >= n

    return check


def _interrupt_when(
    proc: subprocess.Popen[str], ready: Path | Callable[[], bool], settle: float
) -> tuple[float, str]:
    """Send SIGINT ``settle`` s after ``ready`` appears (or holds); return seconds to exit,
    stderr."""
    deadline = time.monotonic() + 60
    while not (ready() if callable(ready) else ready.exists()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the transfer never started"
        time.sleep(0.05)
    time.sleep(settle)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the interrupted command did not exit in 60 s") from None
    return time.monotonic() - sent, err


def test_ctrl_c_under_a_bandwidth_limit_stops_at_once(
    tmp_path: Path, env: dict[str, str], bucket: str
) -> None:
    src = make_file(tmp_path / "model.bin", SIZE, seed=3)
    modelhaul.copy(str(src), f"s3://{bucket}/model.bin")
    dest = tmp_path / "out" / "model.bin"
    # 8 workers reading 1 MiB chunks against 512 KB/s: each waits its turn for seconds
    # (the last up to ~16 s) before its next chunk.
    proc = _start(["cp", f"s3://{bucket}/model.bin", str(dest), "--bandwidth-limit",
                   "512KB/s", "--concurrency", "8", "--part-size", "4MiB"], env)  # fmt: skip
    # Once a first 1 MiB chunk is written (a fixed 2 s wait saw none on a loaded CI
    # machine), and with every worker then waiting its turn of the limit.
    seconds, err = _interrupt_when(proc, _wrote(proc, MiB), 1.0)
    assert proc.returncode == 130, err
    assert RESUME in err and "Traceback" not in err
    assert seconds < 3.0, f"took {seconds:.1f} s to stop"  # the old code: ~15 s
    assert not dest.exists()
    again = run_cli("cp", f"s3://{bucket}/model.bin", str(dest), "--json", env=env)
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["bytes_resumed"] > 0
    assert dest.read_bytes() == src.read_bytes()


def test_ctrl_c_with_every_request_stalled_waits_one_grace_period(
    tmp_path: Path, env: dict[str, str], bucket: str, server: EmbeddedServer
) -> None:
    src = make_file(tmp_path / "model.bin", SIZE, seed=4)
    modelhaul.copy(str(src), f"s3://{bucket}/model.bin")
    dest = tmp_path / "out" / "model.bin"
    with FaultProxy(server.host, server.port, stall_seconds=120) as proxy:
        # Every ranged GET goes silent after part of its body: 8 workers stuck in a read.
        proxy.set_faults([Fault("stall", 1.0, method="GET")])
        proc = _start(["cp", f"s3://{bucket}/model.bin", str(dest), "--concurrency", "8",
                       "--part-size", "4MiB", "--stall-timeout", "100"],
                      {**env, "AWS_ENDPOINT_URL": proxy.url})  # fmt: skip
        ready = dest.with_name("model.bin.modelhaul-partial")
        deadline = time.monotonic() + 60
        while proxy.injected.get("stall", 0) < 8:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, proxy.stats()
            time.sleep(0.05)
        seconds, err = _interrupt_when(proc, ready, 0.5)
    assert proc.returncode == 130, err
    assert RESUME in err and "Traceback" not in err
    # One grace period for all the workers, not one each in turn (the old code: 8 x 5 s).
    assert seconds < CANCEL_GRACE + 2.5, f"took {seconds:.1f} s to stop"
    assert not dest.exists()
