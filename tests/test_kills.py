"""SIGKILL at random moments during cp (both directions), push and pull, then run again.

After every kill: nothing half-done is visible (no object at the destination key, no file
at the destination path, no published manifest, no ready snapshot, unless it is whole
and right), no file in the cache or at the destination has a wrong hash. After the
final rerun: the result is identical, and the bytes moved again across all runs stay
under one part per concurrent stream per kill.

A kill lands at a random moment: a quarter of them at a random time from the start
(start-up, listing, lease, the first requests), the rest after a random share of the
bytes. The fast run kills 3 times per operation; ``pytest -m soak`` 20 times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store
from modelhaul._core.errors import NoSuchKey
from modelhaul._repo.cache import Cache
from modelhaul._repo.manifest import RepoId, parse_repo_id
from modelhaul._repo.mirror import Mirror
from tests.conftest import make_file
from tests.reliability import MiB, record, sha256, tree

PART = 5 * MiB
CONC = 4
BANDWIDTH = 24 * MiB
# The bytes in flight at a kill that a rerun may send again: one part per stream.
WASTE_PER_KILL = CONC * PART

CHILD = textwrap.dedent(
    f"""
    import os, sys, modelhaul
    from modelhaul import TransferConfig, ProgressSubscriber
    op, counter, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    class Count(ProgressSubscriber):
        total = 0
        def bytes_moved(self, label, n):
            Count.total += n
            tmp = counter + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(str(Count.total))
            os.replace(tmp, counter)
    cfg = TransferConfig(part_size={PART}, multipart_threshold={PART}, concurrency={CONC},
                         bandwidth_limit={BANDWIDTH})
    progress = [Count()]
    if op == "cp":
        modelhaul.copy(args[0], args[1], config=cfg, progress=progress)
    elif op == "push":
        modelhaul.push(args[0], args[1], args[2], revision=args[3], config=cfg,
                       progress=progress)
    elif op == "pull":
        modelhaul.pull(args[0], cache_dir=args[1], mirrors=[args[2]], origins=[], config=cfg,
                       progress=progress)
    Count.total += 0
    with open(counter, "w") as fh:
        fh.write(str(Count.total))
    """
)


def _moved(counter: Path) -> int:
    try:
        return int(counter.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _run(args: list[str], env: dict[str, str], counter: Path,
         kill_at: tuple[float, float] | None) -> tuple[bool, int]:  # fmt: skip
    """Run one child; kill it at ``kill_at``: (seconds, bytes moved), whichever comes first.

    Returns (killed, bytes it moved).
    """
    counter.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, args[0], str(counter), *args[1:]], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    start = time.monotonic()
    killed = False
    while proc.poll() is None and time.monotonic() - start < 240:
        if kill_at is not None:
            seconds, moved = kill_at
            if time.monotonic() - start >= seconds or _moved(counter) >= moved:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    if not killed:
        assert proc.returncode == 0, err
    return killed, _moved(counter)


def _campaign(
    op: str,
    args: list[str],
    env: dict[str, str],
    tmp: Path,
    size: int,
    kills: int,
    check: Callable[[], None],
    rng: random.Random,
) -> None:
    """Kill ``kills`` runs at random moments, checking after each; then finish."""
    counter = tmp / f"moved-{op}.txt"
    total = 0
    done = 0
    share = size / (kills + 1)  # so that the killed runs cannot finish the work
    for _ in range(kills):
        if rng.random() < 0.25:
            # At a random time (start-up, listing, leases...), but never past the share
            # of bytes that would let the run finish.
            kill_at = (rng.uniform(0.0, 1.2), 0.9 * share)
            how = "time"
        else:
            kill_at = (float("inf"), rng.uniform(0.02, 0.9) * share)
            how = "bytes"
        killed, moved = _run(args, env, counter, kill_at)
        total += moved
        assert killed, f"{op} finished before its kill at {kill_at}"
        check()
        done += 1
        record("kill", op=op, at=how)
    _, moved = _run(args, env, counter, None)
    total += moved
    check()
    waste = total - size
    assert waste <= kills * WASTE_PER_KILL, (
        f"{op}: {total:,} bytes moved for {size:,} over {kills} kills: "
        f"{waste:,} again, more than one part per stream per kill"
    )
    record("kill_campaign", op=op, kills=done, size=size, moved=total)


def _model(root: Path, seed: int) -> Path:
    make_file(root / "model-00001-of-00002.safetensors", 12 * MiB + 5, seed=seed)
    make_file(root / "model-00002-of-00002.safetensors", 11 * MiB + 7, seed=seed + 1)
    make_file(root / "extra" / "adapter.bin", 7 * MiB + 3, seed=seed + 2)
    (root / "config.json").write_text('{"model_type": "toy"}')
    make_file(root / "tokenizer.json", 40_000, seed=seed + 3)
    return root


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cp_up(tmp: Path, env: dict[str, str], store: S3Store, bucket: str, kills: int,
          rng: random.Random, seed: int) -> None:  # fmt: skip
    size = 30 * MiB + rng.randrange(MiB)
    src = make_file(tmp / f"up-{seed}.bin", size, seed=seed)
    key = f"up/{seed}.bin"
    want = sha256(src)

    def check() -> None:
        try:
            info = store.head(bucket, key)
        except NoSuchKey:
            return
        assert info.size == size
        got = tmp / "check.bin"
        modelhaul.copy(f"s3://{bucket}/{key}", got)
        assert sha256(got) == want, "a wrong object is visible at the destination key"
        got.unlink()

    _campaign("cp-up", ["cp", str(src), f"s3://{bucket}/{key}"], env, tmp, size, kills,
              check, rng)  # fmt: skip
    check()
    store.head(bucket, key)
    assert store.list_uploads(bucket) == []


def cp_down(tmp: Path, env: dict[str, str], store: S3Store, bucket: str, kills: int,
            rng: random.Random, seed: int) -> None:  # fmt: skip
    size = 30 * MiB + rng.randrange(MiB)
    src = make_file(tmp / f"down-src-{seed}.bin", size, seed=seed)
    modelhaul.copy(src, f"s3://{bucket}/down/{seed}.bin")
    want = sha256(src)
    dest = tmp / f"out-{seed}" / f"down-{seed}.bin"

    def check() -> None:
        if not dest.parent.exists():
            return  # killed before it made the folder: nothing was written, nothing to see
        if dest.exists():
            assert sha256(dest) == want, "a wrong file is visible at the destination"
        # Besides the file itself, only the resumable partial file and its journal (and
        # the journal's temporary file, when the kill fell inside its write).
        for p in dest.parent.iterdir():
            assert p.name == dest.name or p.name.startswith(dest.name + ".modelhaul-partial"), p

    _campaign("cp-down", ["cp", f"s3://{bucket}/down/{seed}.bin", str(dest)], env, tmp, size,
              kills, check, rng)  # fmt: skip
    assert sha256(dest) == want
    assert not list(dest.parent.glob("*.modelhaul-partial*"))


def push(tmp: Path, env: dict[str, str], store: S3Store, bucket: str, kills: int,
         rng: random.Random, seed: int) -> None:  # fmt: skip
    src = _model(tmp / f"push-src-{seed}", seed)
    want = tree(src)
    uri = f"s3://{bucket}/mirror"
    mirror = Mirror.from_uri(store, uri)
    repo = RepoId("acme", f"kill{seed}")
    revision = f"v{seed}"

    def check() -> None:
        # The name is given after the manifest, the ref moved after the name.
        manifest = mirror.lookup(repo, revision).manifest
        ref = mirror.ref(repo, "main")
        if manifest is None:
            assert ref is None, "a ref points at a revision that is not published"
            return
        assert {f.path: f.sha256 for f in manifest.files} == want, "a half revision"
        held = mirror.objects(repo, manifest.revision)
        for f in manifest.files:
            assert held[f.path].size == f.size, f"{f.path} published but not whole"

    _campaign("push", ["push", str(src), uri, str(repo), revision], env, tmp, _size(src), kills,
              check, rng)  # fmt: skip
    assert mirror.ref(repo, "main") == mirror.name(repo, revision)
    got = modelhaul.pull(str(repo), cache_dir=tmp / f"verify-{seed}", mirrors=[uri], origins=[])
    assert tree(got) == want


def pull(tmp: Path, env: dict[str, str], store: S3Store, bucket: str, kills: int,
         rng: random.Random, seed: int) -> None:  # fmt: skip
    src = _model(tmp / f"pull-src-{seed}", seed)
    want = tree(src)
    uri = f"s3://{bucket}/mirror"
    repo = f"acme/pull{seed}"
    modelhaul.push(src, uri, repo, revision="v1")
    cache_dir = tmp / f"cache-{seed}"
    cache = Cache(cache_dir)

    def check() -> None:
        blobs = cache_dir / "blobs"
        if blobs.exists():
            for blob in blobs.glob("*/*"):
                if blob.suffix != ".verified":
                    assert sha256(blob) == blob.name, f"wrong hash in the cache: {blob}"
        ready = cache.snapshot_ready(parse_repo_id(repo)[0], "v1", want)
        if ready is not None:
            assert tree(ready) == want, "a ready snapshot that is not whole"

    _campaign("pull", ["pull", repo, str(cache_dir), uri], env, tmp, _size(src), kills, check,
              rng)  # fmt: skip
    got = modelhaul.pull(repo, cache_dir=cache_dir, mirrors=[uri], origins=[], offline=True)
    assert tree(got) == want


OPS = {"cp-up": cp_up, "cp-down": cp_down, "push": push, "pull": pull}


@pytest.mark.parametrize("op", list(OPS))
def test_killed_three_times_then_completes(
    op: str, tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    seed = int(os.environ.get("MODELHAUL_KILL_SEED", "0")) or random.randrange(1, 10**6)
    rng = random.Random(seed)
    print(f"seed {seed}")  # a failure can be replayed with MODELHAUL_KILL_SEED
    OPS[op](tmp_path, env, store, bucket, 3, rng, seed)


@pytest.mark.soak
@pytest.mark.parametrize("op", list(OPS))
def test_killed_twenty_times_then_completes(
    op: str, tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    """20 kills per operation: five rounds of four kills, each on fresh content."""
    for round_ in range(5):
        seed = random.randrange(1, 10**6)
        print(f"round {round_} seed {seed}")
        OPS[op](tmp_path, env, store, bucket, 4, random.Random(seed), seed)
