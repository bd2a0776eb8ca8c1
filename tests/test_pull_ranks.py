"""``modelhaul pull --ranks R/N``: the nodes of a job filling one shared cache. Three real CLI
processes pull one revision into one cache through a counting, throttled proxy: each
fetches its own share of the files (balanced by size), the store serves each byte once,
and every rank ends with the whole revision. A rank SIGKILLed mid-fetch costs the others
nothing but its files: they take them over and nothing half-fetched enters the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import ConfigError, TransferConfig
from modelhaul._core.shares import RankShare, parse_ranks
from modelhaul._repo.cache import Cache
from modelhaul._store.embedded import EmbeddedServer
from tests.conftest import make_file
from tests.faultproxy import FaultProxy
from tests.reliability import MiB, tree

REPO = "acme/ranks"
ROOT = Path(__file__).resolve().parent.parent
# Slow enough that a rank's share takes seconds, so three processes started together all
# lease their shares before any of them could run out of work and take another's.
RATE = 3 * MiB


def _model(root: Path) -> Path:
    sizes = [9, 7, 6, 5, 4, 3]  # MiB: a split by size, not by count, gives 3 ranks 11-12 each
    for n, size in enumerate(sizes):
        make_file(root / f"model-{n + 1:05d}-of-00006.safetensors", size * MiB + n, seed=n)
    (root / "config.json").write_text('{"model_type": "toy"}')
    return root


def _pull(env: dict[str, str], uri: str, cache: Path, ranks: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelhaul", "--json", "pull", REPO, "--mirror", uri,
         "--origin", "none", "--cache-dir", str(cache), "--ranks", ranks],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _fetched(events: list[dict[str, object]]) -> set[str]:
    return {str(e["path"]) for e in events if e["event"] == "file_done" and e["source"] == "mirror"}


@pytest.fixture
def mirror(
    tmp_path: Path, env: dict[str, str], bucket: str, server: EmbeddedServer
) -> Iterator[tuple[FaultProxy, dict[str, str], str, Path]]:
    src = _model(tmp_path / "src")
    uri = f"s3://{bucket}/mirror"
    modelhaul.push(src, uri, REPO, config=TransferConfig(part_size=5 * MiB))
    with FaultProxy("127.0.0.1", server.port, body_rate=RATE) as proxy:
        yield proxy, {**env, "AWS_ENDPOINT_URL": proxy.url}, uri, src


def _three_ranks(
    tmp_path: Path, mirror: tuple[FaultProxy, dict[str, str], str, Path]
) -> tuple[FaultProxy, Path, int, Path, list[subprocess.Popen[str]]]:
    """Ranks 0/3, 1/3 and 2/3 pulling at once into one cache: the proxy, the model's
    folder and size, the cache, the processes."""
    proxy, env, uri, src = mirror
    cache = tmp_path / "shared-cache"
    procs = [_pull(env, uri, cache, f"{r}/3") for r in range(3)]
    return proxy, src, sum(p.stat().st_size for p in src.iterdir()), cache, procs


def test_three_ranks_fetch_disjoint_balanced_shares_and_each_byte_once(
    tmp_path: Path, mirror: tuple[FaultProxy, dict[str, str], str, Path]
) -> None:
    proxy, src, size, _, procs = _three_ranks(tmp_path, mirror)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    events = [_events(out) for out, _ in outs]
    shares = [next(e["paths"] for e in ev if e["event"] == "share") for ev in events]
    fetched = [_fetched(ev) for ev in events]
    files = {p.name for p in src.iterdir()}
    # Every rank computed the same split: disjoint, complete, and what each one fetched.
    assert sorted(f for s in shares for f in s) == sorted(files)  # type: ignore[attr-defined]
    assert fetched == [set(s) for s in shares]  # type: ignore[call-overload]
    loads = [sum((src / f).stat().st_size for f in s) for s in fetched]
    assert max(loads) - min(loads) <= 4 * MiB, loads  # by size: 11-12 MiB each, not 16/9/6
    # The store served the revision once, not three times.
    assert proxy.body_bytes <= 1.05 * size, (proxy.body_bytes, size)
    # Every rank printed the same complete snapshot.
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(folders) == 1
    assert tree(Path(folders.pop())) == tree(src)


def test_a_rank_killed_mid_fetch_leaves_its_files_to_the_others(
    tmp_path: Path, mirror: tuple[FaultProxy, dict[str, str], str, Path]
) -> None:
    proxy, src, size, cache, procs = _three_ranks(tmp_path, mirror)
    victim = procs[1]
    assert victim.stdout is not None
    share: list[str] = []
    for line in victim.stdout:  # it has leased its share and started reading it
        if '"share"' in line:
            share = json.loads(line)["paths"]
        if '"file_start"' in line:
            break
    time.sleep(0.5)  # a share takes seconds at RATE: it is mid-file
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=10)
    started = time.monotonic()
    outs = [p.communicate(timeout=120) for p in (procs[0], procs[2])]
    took = time.monotonic() - started
    for p, (_, err) in zip((procs[0], procs[2]), outs, strict=True):
        assert p.returncode == 0, err
    # The dead rank's files were taken over at once (its pid is gone), not after the ttl.
    assert took < 30, took
    fetched = [_fetched(_events(out)) for out, _ in outs]
    big = [f for f in share if (src / f).stat().st_size > MiB]
    assert big and set(big) <= fetched[0] | fetched[1], (share, fetched)
    for out, _ in outs:
        assert tree(Path(out.strip().splitlines()[-1])) == tree(src)
    # Nothing the victim left half-written is a blob; its share is all that came twice.
    report = Cache(cache).verify()
    assert report.bad == [] and report.blobs == len(list(src.iterdir())), report
    again = sum((src / f).stat().st_size for f in share)
    assert proxy.body_bytes <= 1.05 * size + again, (proxy.body_bytes, size, again)


def test_ranks_parse_from_text_and_launchers() -> None:
    assert parse_ranks("2/4") == RankShare(2, 4)
    assert parse_ranks("auto", {"RANK": "3", "WORLD_SIZE": "8"}) == RankShare(3, 8)
    assert parse_ranks("auto", {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == RankShare(1, 2)
    for bad, says in (("4/4", "below the number"), ("0/0", "at least one"), ("a/b", "not R/N")):
        with pytest.raises(ConfigError, match=says):
            parse_ranks(bad, {})
    with pytest.raises(ConfigError, match="no launcher"):
        parse_ranks("auto", {})
    # Largest first, each to the least loaded: 9+3 | 7+4 | 6+5.
    share = [RankShare(r, 3).mine([9, 7, 6, 5, 4, 3]) for r in range(3)]
    assert share == [
        [True, False, False, False, False, True],
        [False, True, False, False, True, False],
        [False, False, True, True, False, False],
    ]
