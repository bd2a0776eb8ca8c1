"""The shared cache: concurrent pullers, leases, verify/repair, clean, the size budget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store
from modelhaul._repo.cache import Cache, place_file
from modelhaul._repo.manifest import RepoId
from modelhaul._store.lease import FileLeaseBackend, Lease
from tests.conftest import run_cli
from tests.test_repo import CONFIG, make_model, pull, tree


def test_four_processes_pull_one_model_once(
    tmp_path: Path, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG)
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "modelhaul", "pull", "acme/toy", "--mirror", uri,
            "--origin", "none", "--cache-dir", str(cache), "--json", "--part-size", "5MiB"]  # fmt: skip
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in outs]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    assert tree(Path(paths.pop())) == tree(src)
    fetched: list[str] = []
    for out, _ in outs:
        for line in out.strip().splitlines()[:-1]:
            event = json.loads(line)
            if event["event"] == "file_done" and event["source"] == "mirror":
                fetched.append(event["path"])
    assert sorted(fetched) == sorted(tree(src)), "each file is downloaded exactly once"


def lease(path: Path, ttl: float = 30.0) -> Lease:
    return Lease(FileLeaseBackend(path, "the test lock"), ttl=ttl)


def test_lease_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"holder": "x", "host": socket.gethostname(), "pid": int(dead.stdout), "beat": 0,
              "ttl": 3600, "since": time.time()}  # fmt: skip
    path = tmp_path / "x.lease"
    path.write_text(json.dumps(record))
    mine = lease(path)
    assert mine.try_acquire()  # at once: the holder's process is gone
    mine.release()
    assert not path.exists()


def test_lease_without_heartbeat_expires_by_our_clock(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    path.write_text(json.dumps({"holder": "y", "host": "another-host", "pid": 1, "ttl": 0.5,
                                "since": 0}))  # fmt: skip
    mine = lease(path)
    assert not mine.try_acquire()
    started = time.monotonic()
    mine.acquire(timeout=10, poll=0.05)
    assert 0.4 < time.monotonic() - started < 5
    assert json.loads(path.read_text())["holder"] == mine.holder
    mine.release()


def test_live_holder_makes_a_bounded_wait_that_names_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    holder = lease(path, ttl=1.0)  # beats every 0.25 s
    assert holder.try_acquire()
    try:
        waiter = lease(path, ttl=1.0)
        with pytest.raises(modelhaul.LockTimeout) as info:
            waiter.acquire(timeout=2.5, poll=0.05)  # longer than the ttl: the beats count
        assert f"pid {os.getpid()}" in info.value.holder
        assert "the test lock" in str(info.value) and info.value.hint
    finally:
        holder.release()
    waiter.acquire(timeout=1)
    waiter.release()


def test_broken_lease_is_noticed_by_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    holder = lease(path, ttl=0.4)
    assert holder.try_acquire()
    path.write_text(json.dumps({"holder": "thief", "host": "h", "pid": 1}))
    deadline = time.monotonic() + 3
    while not holder.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.lost and not holder.held
    holder.release()  # must not remove the thief's record
    assert "thief" in path.read_text()


def test_verify_and_repair(tmp_path: Path, bucket: str, env: dict[str, str]) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG).revision
    cache_dir = tmp_path / "cache"
    folder = pull("acme/toy@v1", cache_dir, uri)
    ok = run_cli("cache", "verify", "--cache-dir", str(cache_dir), env=env)
    assert "0 damaged" in ok.stdout
    cache = Cache(cache_dir)
    victim = folder / "config.json"
    os.chmod(victim, 0o644)
    victim.write_text('{"tampered": true}')  # through the hard link: the blob changes too
    # A cache hit notices the change by stat alone, and fetches the file again.
    again = pull("acme/toy@v1", cache_dir, uri)
    assert tree(again) == tree(src)
    # Damage a blob without changing its size or mtime: only verify can find it.
    manifest = cache.load_manifest(RepoId("acme", "toy"), rev)
    assert manifest is not None
    entry = manifest.by_path()["tokenizer/vocab/merges.bin"]
    path = cache.blob_path(entry.sha256)
    st = path.stat()
    os.chmod(path, 0o644)
    with path.open("r+b") as fh:
        fh.write(b"\0\0\0\0")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    bad = run_cli("cache", "verify", "--cache-dir", str(cache_dir), env=env, check=False)
    assert bad.returncode == 1 and "DAMAGED" in bad.stdout and "--repair" in bad.stderr
    fixed = run_cli("cache", "verify", "--repair", "--cache-dir", str(cache_dir), env=env)
    assert "(removed)" in fixed.stdout
    assert not path.exists()
    assert tree(pull("acme/toy@v1", cache_dir, uri)) == tree(src)


def test_cache_ls_and_clean(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/m"
    cache_dir = tmp_path / "cache"
    revs = {}
    for i, name in enumerate(("acme/a", "acme/b", "acme/c")):
        revs[name] = modelhaul.push(make_model(tmp_path / name, seed=10 * i), uri, name,
                                    revision="v1", config=CONFIG).revision  # fmt: skip
        pull(name, cache_dir, uri)
        time.sleep(0.02)
    (cache_dir / "tmp" / ("f" * 64 + ".modelhaul-partial")).write_bytes(b"x" * 4096)
    listing = run_cli("cache", "ls", "--cache-dir", str(cache_dir), env=env).stdout
    for name in (*(f"{r}@{v}" for r, v in revs.items()), "partial download"):
        assert name in listing
    js = json.loads(run_cli("cache", "ls", "--json", "--cache-dir", str(cache_dir), env=env).stdout)
    assert len(js["revisions"]) == 3 and js["partial"]
    cache = Cache(cache_dir)
    one = cache.blob_bytes() / 3

    out = run_cli("cache", "clean", "--repo", "acme/b", "--cache-dir", str(cache_dir), env=env)
    assert f"removed acme/b@{revs['acme/b']}" in out.stdout
    assert {e.repo for e in cache.entries()} == {"acme/a", "acme/c"}
    pull("acme/a", cache_dir, uri)  # a is now the most recently used
    out = run_cli("cache", "clean", "--max-size", str(int(one * 1.5)), "--cache-dir",
                  str(cache_dir), env=env)  # fmt: skip
    assert f"removed acme/c@{revs['acme/c']}" in out.stdout
    assert {e.repo for e in cache.entries()} == {"acme/a"}
    assert cache.blob_bytes() <= one * 1.5
    time.sleep(0.05)
    run_cli("cache", "clean", "--older-than", "0", "--cache-dir", str(cache_dir), env=env)
    assert cache.entries() == [] and cache.blob_bytes() == 0
    assert cache.partials() == []  # stale partial downloads go too


def test_size_budget_applied_after_pull(tmp_path: Path, bucket: str, env: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    uri = f"s3://{bucket}/m"
    cache_dir = tmp_path / "cache"
    config = tmp_path / "config.toml"
    config.write_text('[repo]\ncache_size = "20MiB"\norigins = []\n')
    monkeypatch.setenv("MODELHAUL_CONFIG", str(config))
    for i, name in enumerate(("acme/a", "acme/b")):
        modelhaul.push(make_model(tmp_path / name, seed=i), uri, name, revision="v1",
                       config=CONFIG)  # fmt: skip
        modelhaul.pull(name, cache_dir=cache_dir, mirrors=[uri], config=CONFIG)
    assert [e.repo for e in Cache(cache_dir).entries()] == ["acme/b"]


def test_placing_a_file_already_linked_to_its_blob_leaves_no_temporary_name(
    tmp_path: Path,
) -> None:
    # rename(2) is a no-op when both names link one inode: a second rank placing the
    # blob the first one placed must not leave ".name.<hex>.tmp" in the snapshot.
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    dest = tmp_path / "snapshot" / "model.safetensors"
    assert place_file(blob, dest) == "link"
    assert place_file(blob, dest) == "link"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.safetensors"]
    assert dest.read_bytes() == b"weights"
