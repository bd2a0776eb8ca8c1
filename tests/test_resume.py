"""Kill a copy with SIGKILL midway, run it again: the result is identical and the rerun
moves only what was missing. Replace an object mid-download: never a mixed file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._transfer.download import JOURNAL_EVERY
from tests.conftest import make_file

MiB = 1024 * 1024
SIZE = 48 * MiB
PART = 5 * MiB
CONC = 4

CHILD = textwrap.dedent(
    """
    import os, sys, threading, modelhaul
    from modelhaul import TransferConfig, ProgressSubscriber
    class Count(ProgressSubscriber):
        # Workers report from several threads: one at a time, so the file only grows, and
        # replaced whole, so a kill never leaves it empty.
        total = 0
        lock = threading.Lock()
        def bytes_moved(self, label, n):
            with Count.lock:
                Count.total += n
                with open(sys.argv[3] + ".tmp", "w") as fh:
                    fh.write(str(Count.total))
                os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    cfg = TransferConfig(part_size={part}, multipart_threshold={part}, concurrency={conc},
                         bandwidth_limit=16 * 1024 * 1024)
    modelhaul.copy(sys.argv[1], sys.argv[2], config=cfg, progress=[Count()])
    """
).format(part=PART, conc=CONC)


def kill_midway(src: str, dst: str, tmp: Path, env: dict[str, str]) -> int:
    """Run a throttled copy in a child and SIGKILL it after ~60%; return bytes it moved.

    Past 60% (29 MiB) at least one 5 MiB range has finished even if all four streams
    were mid-range, so the journal has something to resume from.
    """
    counter = tmp / "moved.txt"
    counter.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, src, dst, str(counter)], env=env)
    deadline = time.monotonic() + 60
    moved = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            moved = int(counter.read_text() or 0)
        except (OSError, ValueError):
            moved = 0
        if moved >= SIZE * 0.6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the copy finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(counter.read_text())


def test_download_killed_then_resumed(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=11)
    modelhaul.copy(src, f"s3://{bucket}/obj.bin")
    dest = tmp_path / "out.bin"
    moved = kill_midway(f"s3://{bucket}/obj.bin", str(dest), tmp_path, env)
    assert not dest.exists()
    assert (tmp_path / "out.bin.modelhaul-partial").exists()
    # What the killed run had recorded as done: the ranges a rerun may keep.
    journal = json.loads((tmp_path / "out.bin.modelhaul-partial.json").read_text())
    journaled = sum(end - start for start, end, _ in journal["segments"])
    stats = modelhaul.copy(
        f"s3://{bucket}/obj.bin", dest, config=TransferConfig(part_size=PART, concurrency=CONC)
    )
    assert dest.read_bytes() == src.read_bytes()
    # The rerun kept every journaled byte and fetched exactly the rest.
    assert stats.bytes_resumed == journaled > 0
    assert stats.bytes == SIZE - journaled
    # The kill cost at most the range in flight on each stream: the child's ranges are
    # PART long, shorter than a journal interval, so each is journaled when it ends.
    assert PART < JOURNAL_EVERY
    assert moved - CONC * PART <= journaled <= moved
    assert not list(tmp_path.glob("out.bin.modelhaul-partial*"))


def test_upload_killed_then_resumed(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=12)
    moved = kill_midway(str(src), f"s3://{bucket}/up.bin", tmp_path, env)
    assert [u.key for u in store.list_uploads(bucket)] == ["up.bin"]
    stats = modelhaul.copy(
        src,
        f"s3://{bucket}/up.bin",
        config=TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=CONC),
    )
    assert stats.bytes_resumed > 0
    assert stats.bytes + stats.bytes_resumed == SIZE
    # Parts in flight at the kill are sent again: at most one per stream.
    assert stats.bytes <= SIZE - moved + CONC * PART
    assert store.get_bytes(bucket, "up.bin") == src.read_bytes()
    assert store.list_uploads(bucket) == []


def test_upload_of_changed_file_starts_over(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=13)
    kill_midway(str(src), f"s3://{bucket}/ch.bin", tmp_path, env)
    make_file(src, SIZE, seed=14)  # rewritten: new mtime, new bytes
    stats = modelhaul.copy(
        src,
        f"s3://{bucket}/ch.bin",
        config=TransferConfig(part_size=PART, multipart_threshold=PART),
    )
    assert stats.bytes_resumed == 0
    assert store.get_bytes(bucket, "ch.bin") == src.read_bytes()
    assert store.list_uploads(bucket) == []


def test_upload_forgotten_by_store_starts_over(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=15)
    kill_midway(str(src), f"s3://{bucket}/gone.bin", tmp_path, env)
    modelhaul.abort_uploads(f"s3://{bucket}/", older_than=0)
    stats = modelhaul.copy(
        src,
        f"s3://{bucket}/gone.bin",
        config=TransferConfig(part_size=PART, multipart_threshold=PART),
    )
    assert stats.bytes == SIZE and stats.bytes_resumed == 0
    assert store.get_bytes(bucket, "gone.bin") == src.read_bytes()


def test_corrupt_journal_does_not_wedge(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=16)
    modelhaul.copy(src, f"s3://{bucket}/j.bin")
    dest = tmp_path / "j.out"
    kill_midway(f"s3://{bucket}/j.bin", str(dest), tmp_path, env)
    journal = tmp_path / "j.out.modelhaul-partial.json"
    journal.write_bytes(b'{"version": 1, "segm')  # torn, as if killed mid-write
    modelhaul.copy(f"s3://{bucket}/j.bin", dest)
    assert dest.read_bytes() == src.read_bytes()


def test_object_replaced_during_download(tmp_path: Path, store: S3Store, bucket: str) -> None:
    old = make_file(tmp_path / "old.bin", 24 * MiB, seed=21)
    new = make_file(tmp_path / "new.bin", 24 * MiB, seed=22)
    modelhaul.copy(old, f"s3://{bucket}/v.bin")
    dest = tmp_path / "v.out"
    started = threading.Event()

    class Trigger(modelhaul.ProgressSubscriber):
        def bytes_moved(self, label: str, n: int) -> None:
            started.set()

    def overwrite() -> None:
        started.wait(10)
        modelhaul.copy(new, f"s3://{bucket}/v.bin")

    t = threading.Thread(target=overwrite)
    t.start()
    modelhaul.copy(
        f"s3://{bucket}/v.bin",
        dest,
        progress=[Trigger()],
        config=TransferConfig(part_size=MiB, concurrency=2, bandwidth_limit=12 * MiB),
    )
    t.join()
    # Restarted from the new version: exactly the new bytes, never a mix.
    assert dest.read_bytes() == new.read_bytes()


def test_json_summary_from_cli(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    from tests.conftest import run_cli

    src = make_file(tmp_path / "c.bin", 3 * MiB, seed=5)
    out = run_cli("cp", str(src), f"s3://{bucket}/c.bin", "--json", env=env)
    summary = json.loads(out.stdout)
    assert summary["bytes"] == 3 * MiB and summary["files"] == 1
    assert {"seconds", "mb_per_s", "retries", "bytes_resumed"} <= set(summary)
    out = run_cli("cp", f"s3://{bucket}/c.bin", str(tmp_path / "c.out"), "--json", env=env)
    assert json.loads(out.stdout)["bytes"] == 3 * MiB
    assert (tmp_path / "c.out").read_bytes() == src.read_bytes()


def test_an_upload_a_run_started_just_before_it_was_killed_is_aborted_by_the_rerun(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    """Killed between the store's answer to CreateMultipartUpload and its journal: the run
    had written only its intent. The rerun finds that upload and aborts it; an upload of
    another key is left alone."""
    from modelhaul._transfer.journal import upload_journal_path, write_journal

    src = make_file(tmp_path / "big.bin", 12 * 1024 * 1024 + 3)
    key = "orphan/big.bin"
    config = TransferConfig(part_size=5 * 1024 * 1024, multipart_threshold=5 * 1024 * 1024)
    journal = upload_journal_path(store.describe(), bucket, key, str(src.resolve()))
    st = src.stat()
    identity = {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino}  # fmt: skip
    write_journal(journal, {"bucket": bucket, "key": key, "upload_id": None,
                            "identity": identity, "part_size": config.part_size, "parts": {},
                            "creating": time.time()})  # fmt: skip
    store.create_multipart(bucket, key)  # what the killed run's request made
    other = store.create_multipart(bucket, "orphan/other.bin")
    modelhaul.copy(str(src), f"s3://{bucket}/{key}", config=config)
    assert store.get_bytes(bucket, key) == src.read_bytes()
    assert [(u.key, u.upload_id) for u in store.list_uploads(bucket)] == [
        ("orphan/other.bin", other)
    ]
    assert not journal.exists()
