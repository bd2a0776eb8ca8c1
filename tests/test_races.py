"""Races: readers pulling a ref while a new revision is pushed and the ref moves see the
old revision or the complete new one, never anything in between; readers asking for the
new revision by id while it is being pushed get "no such revision" or all of it; four
processes pulling one model into one cache (tests/test_repo_cache.py has the fast one;
the soak repeats it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from tests.conftest import make_file
from tests.reliability import MiB, record, tree

READER = textwrap.dedent(
    """
    import json, sys, time, uuid
    from pathlib import Path
    import modelhaul
    from tests.reliability import tree
    repo, uri, root, stop, by_id = sys.argv[1:6]
    while not Path(stop).exists():
        for name in (repo, f"{repo}@{by_id}"):
            cache = Path(root) / uuid.uuid4().hex[:8]
            try:
                got = modelhaul.pull(name, cache_dir=cache, mirrors=[uri], origins=[])
                out = {"name": name, "tree": tree(got)}
            except modelhaul.ModelhaulError as exc:
                out = {"name": name, "error": type(exc).__name__, "message": exc.message}
            print(json.dumps(out), flush=True)
    """
)


def _model(root: Path, seed: int) -> Path:
    make_file(root / "a.safetensors", 6 * MiB + seed, seed=seed)
    make_file(root / "b.safetensors", 3 * MiB + 1, seed=seed + 1)
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    return root


def _push_while_pulling(tmp: Path, env: dict[str, str], bucket: str, rounds: int) -> None:
    uri = f"s3://{bucket}/mirror"
    repo = "acme/race"
    versions = {"v0": tree(_model(tmp / "v0", 0))}
    modelhaul.push(tmp / "v0", uri, repo, revision="v0")
    slow = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, bandwidth_limit=4 * MiB)
    for n in range(1, rounds + 1):
        new = f"v{n}"
        versions[new] = tree(_model(tmp / new, n * 10))
        stop = tmp / f"stop-{n}"
        readers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    READER,
                    repo,
                    uri,
                    str(tmp / f"caches-{n}-{i}"),
                    str(stop),
                    new,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            for i in range(3)
        ]
        try:
            time.sleep(1.5)  # the readers are pulling the old revision
            modelhaul.push(tmp / new, uri, repo, revision=new, config=slow)
            time.sleep(1.5)  # and now the new one
        finally:
            stop.touch()
        seen: dict[str, int] = {}
        for proc in readers:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            for line in out.splitlines():
                event = json.loads(line)
                if "error" in event:
                    # Only asking for the new revision by id before it is published.
                    assert event["name"].endswith(f"@{new}"), event
                    assert event["error"] == "NoSuchRevision", event
                    seen["not yet"] = seen.get("not yet", 0) + 1
                    continue
                which = [v for v, t in versions.items() if t == event["tree"]]
                assert len(which) == 1, f"{event['name']}: a tree of no single revision"
                if event["name"].endswith(f"@{new}"):
                    assert which == [new], event["name"]
                else:
                    assert which[0] in (f"v{n - 1}", new), which
                seen[which[0]] = seen.get(which[0], 0) + 1
        # The readers really overlapped the push: both the old ref and the new one.
        assert seen.get(f"v{n - 1}", 0) > 0 and seen.get(new, 0) > 0, seen
        record("race", name="push while pulling", rounds=1, pulls=sum(seen.values()))


def test_push_while_others_pull_the_old_ref(
    tmp_path: Path, env: dict[str, str], bucket: str
) -> None:
    _push_while_pulling(tmp_path, env, bucket, rounds=1)


@pytest.mark.soak
def test_push_while_others_pull_soak(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    _push_while_pulling(tmp_path, env, bucket, rounds=6)


@pytest.mark.soak
def test_four_pullers_one_cache_soak(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    from tests.test_repo_cache import test_four_processes_pull_one_model_once

    for round_ in range(5):
        sub = tmp_path / f"r{round_}"
        sub.mkdir()
        fresh = f"{bucket}-{round_}"
        store.client().create_bucket(Bucket=fresh)
        test_four_processes_pull_one_model_once(sub, fresh, env)
        record("race", name="four pullers one cache", rounds=1)


def test_readers_threads_see_whole_revisions(tmp_path: Path, bucket: str) -> None:
    """In one process too: threads pulling while the ref moves."""
    uri = f"s3://{bucket}/m"
    old = tree(_model(tmp_path / "old", 1))
    new = tree(_model(tmp_path / "new", 2))
    modelhaul.push(tmp_path / "old", uri, "acme/t", revision="old")
    results: list[dict[str, str]] = []
    stop = threading.Event()

    def reader(i: int) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            got = modelhaul.pull("acme/t", cache_dir=tmp_path / f"c{i}-{k}", mirrors=[uri],
                                 origins=[])  # fmt: skip
            results.append(tree(got))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        modelhaul.push(tmp_path / "new", uri, "acme/t", revision="new")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results and all(r in (old, new) for r in results)
    assert results[-1] == new
