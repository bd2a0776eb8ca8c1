"""TransferBusy, SourceChanged and Cancelled reach a user of the CLI as an error line and a
hint, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import modelhaul
from modelhaul import S3Store
from tests.conftest import make_file, run_cli

MiB = 1024 * 1024


def _error_and_hint(stderr: str) -> tuple[str, str]:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    return lines[-2], lines[-1]


def _slow_cp(src: str, dst: str, env: dict[str, str], rate: str = "1MB/s") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelhaul", "cp", src, dst, "--bandwidth-limit", rate],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_second_download_to_one_file_is_busy(
    tmp_path: Path, env: dict[str, str], bucket: str
) -> None:
    src = make_file(tmp_path / "src.bin", 16 * MiB, seed=21)
    modelhaul.copy(str(src), f"s3://{bucket}/busy.bin")
    dest = tmp_path / "busy.bin"
    first = _slow_cp(f"s3://{bucket}/busy.bin", str(dest), env)
    try:
        deadline = time.monotonic() + 60
        while not dest.with_name("busy.bin.modelhaul-partial").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli("cp", f"s3://{bucket}/busy.bin", str(dest), env=env, check=False)
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 1
    error, hint = _error_and_hint(second.stderr)
    assert error == f"error: TransferBusy: another modelhaul process is downloading to {dest}"
    assert hint.startswith("  hint: wait for it to finish, or stop it")


def test_source_shrinking_during_upload(
    tmp_path: Path, env: dict[str, str], bucket: str, store: S3Store
) -> None:
    src = make_file(tmp_path / "src.bin", 24 * MiB, seed=22)  # multipart: 3 parts
    proc = _slow_cp(str(src), f"s3://{bucket}/changing.bin", env, rate="3MB/s")
    time.sleep(1.5)  # started, far from done (8 s at 3 MB/s)
    assert proc.poll() is None, proc.communicate()
    os.truncate(src, 6 * MiB)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    error, hint = _error_and_hint(err)
    # Caught when a part is read ("became shorter") or, parts already read, at the end.
    assert error in (
        f"error: SourceChanged: {src} became shorter while it was being uploaded",
        f"error: SourceChanged: {src} changed while it was being uploaded; the upload was not "
        "completed",
    )
    assert hint == "  hint: let the program writing it finish, then upload again"
    assert not list(store.list(bucket))  # no object, and no upload left behind
    assert not store.list_uploads(bucket)


def test_cancelled_says_what_to_do() -> None:
    err = modelhaul.Cancelled()
    assert isinstance(err, modelhaul.ModelhaulError)
    assert err.message == "the transfer was cancelled"
    assert "run the same command again" in err.hint
    busy = modelhaul.TransferBusy("another process writes x")
    assert "wait for the other process" in busy.hint


def test_source_changing_during_a_single_put(
    tmp_path: Path, env: dict[str, str], bucket: str, store: S3Store
) -> None:
    """A file small enough for one PUT, changed while the PUT is on the wire: the store
    holds the bytes as they were read (a whole object, its CRC32C checked), and the error
    says so rather than claiming nothing was stored."""
    src = make_file(tmp_path / "small.bin", 4 * MiB, seed=23)
    before = src.read_bytes()
    proc = _slow_cp(str(src), f"s3://{bucket}/small.bin", env)
    time.sleep(1.5)  # read, and being sent at 1 MB/s
    assert proc.poll() is None, proc.communicate()
    with src.open("r+b") as f:
        f.write(b"changed")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    error, hint = _error_and_hint(err)
    assert error == (
        f"error: SourceChanged: {src} changed while it was being uploaded; "
        f"s3://{bucket}/small.bin holds it as it was when it was read"
    )
    assert hint == "  hint: let the program writing it finish, then upload again"
    assert store.get_bytes(bucket, "small.bin") == before
