"""5,000 files, 0 B to 1 MiB, four folders deep, unicode and spaces in the names: ``cp -r``
up and down through the real CLI, SIGKILLed part-way, then run again.

After the kill nothing half-written is at a destination name; the rerun sends exactly one
request per file that is still missing (counted through a relaying proxy, by method) and
skips the rest; the end result is byte-identical. Then ``--overwrite`` copies everything.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelhaul import EmbeddedServer, S3Store
from modelhaul._transfer.download import PARTIAL_SUFFIX
from tests.faultproxy import FaultProxy

FILES = 5000
PAGES = 5  # listing 5,000 keys
MiB = 1024 * 1024


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as p:
        yield p


def _tree(root: Path) -> dict[str, bytes]:
    """Mostly small files (tokenizers, configs, DCP shards), a few empty, a few of 1 MiB."""
    rng = random.Random(5000)
    then = time.time() - 60
    out = {}
    for i in range(FILES):
        rel = f"l1 é{i % 3}/l2 {i % 7}/数据 {i % 11}/l4 {i % 13}/f {i} ü.bin"
        if i % 500 == 0:
            size = 0
        elif i % 500 == 1:
            size = MiB
        else:
            size = int(2 ** rng.uniform(0, 15))  # 1 B to 32 KiB, log-uniform
        data = rng.randbytes(size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # Written a minute ago: stores keep whole seconds, so an object PUT in the same
        # second as its file's last change is (rightly) not known to be newer and is sent
        # again by a rerun.
        os.utime(path, (then, then))
        out[rel] = data
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(PARTIAL_SUFFIX)
    }


def _cp(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelhaul", "cp", "--json", "-r", *args]


def _kill_when(cmd: list[str], env: dict[str, str], ready: Callable[[], bool]) -> None:
    """Start ``cmd`` and SIGKILL it once ``ready()`` says it is part-way."""
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not ready():
            assert child.poll() is None, "the copy ended before the kill: nothing tested"
            assert time.monotonic() < deadline, "the copy made no progress in 300 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        assert child.stderr is not None
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.5)  # a request the store got whole before the kill lands meanwhile


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_5000_files_up_and_down_killed_midway_then_rerun_copy_only_what_is_missing(
    env: dict[str, str], tmp_path: Path, proxy: FaultProxy, store: S3Store, bucket: str
) -> None:
    want = _tree(tmp_path / "src")
    via = {**env, "AWS_ENDPOINT_URL": proxy.url}
    up = _cp(f"{tmp_path / 'src'}/", f"s3://{bucket}/many/")

    # Upload, killed once about a third of the PUTs went out.
    _kill_when(up, via, lambda: proxy.by_method.get("PUT", 0) >= FILES // 3)
    there = {o.key[len("many/") :]: o.size for o in store.list(bucket, "many/")}
    assert 0 < len(there) < FILES, len(there)
    for rel, size in there.items():  # each object that is there is whole
        assert size == len(want[rel]), rel
    before = proxy.by_method
    summary = _run(up, via)
    after = proxy.by_method
    assert after.get("PUT", 0) - before.get("PUT", 0) == FILES - len(there)
    assert after.get("HEAD", 0) == before.get("HEAD", 0)
    assert summary["files"] == FILES - len(there)
    assert summary["files_skipped"] == len(there)
    for rel, data in random.Random(1).sample(sorted(want.items()), 200):
        assert store.get_bytes(bucket, f"many/{rel}") == data, rel

    # Download, killed once a third of the files are in place.
    dst = tmp_path / "dst"
    down = _cp(f"s3://{bucket}/many/", str(dst))
    gets = proxy.by_method.get("GET", 0)
    _kill_when(down, via, lambda: proxy.by_method.get("GET", 0) - gets >= FILES // 3)
    here = _files(dst)
    assert 0 < len(here) < FILES, len(here)
    for rel, data in here.items():  # no half-written file at a destination name
        assert data == want[rel], rel
    before = proxy.by_method
    summary = _run(down, via)
    after = proxy.by_method
    # The listing (1,000 keys a page), then one GET per file still missing (an empty
    # object needs none: the listing says all there is).
    missing = [rel for rel in want if rel not in here and want[rel]]
    assert after.get("GET", 0) - before.get("GET", 0) == PAGES + len(missing)
    assert summary["files_skipped"] == len(here)
    assert _files(dst) == want
    assert not [p for p in dst.rglob("*") if p.name.endswith(PARTIAL_SUFFIX)]

    # A file changed in place (same size, new mtime) is copied again; the rest is not.
    changed = sorted(want)[17]
    (dst / changed).write_bytes(b"x" * len(want[changed]))
    before = proxy.by_method
    summary = _run(down, via)
    assert proxy.by_method.get("GET", 0) - before.get("GET", 0) == PAGES + 1
    assert (summary["files"], summary["files_skipped"]) == (1, FILES - 1)
    assert (dst / changed).read_bytes() == want[changed]

    # --overwrite copies every file again.
    before = proxy.by_method
    summary = _run([*up[:-2], "--overwrite", *up[-2:]], via)
    assert proxy.by_method.get("PUT", 0) - before.get("PUT", 0) == FILES
    assert summary["files_skipped"] == 0
