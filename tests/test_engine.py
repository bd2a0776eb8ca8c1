"""Engine behaviour a user relies on: fork safety, credentials from ~/.aws (refreshed when
they expire), no stall at 99%, a bounded memory budget."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest
from botocore.credentials import RefreshableCredentials

import modelhaul
from modelhaul import S3Store, TransferConfig, load_profile
from modelhaul._transfer.download import DownloadJob
from modelhaul._transfer.engine import Engine
from tests.conftest import ACCESS_KEY, SECRET_KEY, make_file

MiB = 1024 * 1024


def _child_read(store: S3Store, bucket: str, key: str) -> tuple[bool, bytes]:
    inherited = dict(store._clients)
    data = store.get_bytes(bucket, key)
    fresh = store.client()
    return all(fresh is not c for c in inherited.values()), data


def test_store_is_safe_across_fork(tmp_path: Path, store: S3Store, bucket: str) -> None:
    store.put(bucket, "k.bin", b"payload" * 1000)
    assert store.get_bytes(bucket, "k.bin") == b"payload" * 1000  # parent has a client now
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_child_read, [(store, bucket, "k.bin")] * 4)
        for own_client, data in results:
            assert own_client, f"a {method}ed child reused its parent's client"
            assert data == b"payload" * 1000
    assert store.get_bytes(bucket, "k.bin") == b"payload" * 1000  # parent still fine


def test_aws_profile_credentials_are_used(
    env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A modelhaul profile named like a ~/.aws/credentials profile signs with that
    profile's keys: its requests go through, and a profile with the wrong secret is
    refused by the store."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    aws = Path(env["HOME"]) / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[team]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        f"[stale]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-the-secret\n"
    )
    team = load_profile("team")
    assert team.aws_profile == "team" and team.access_key_id is None
    store = S3Store(team)
    store.put(bucket, "team.bin", b"signed with the team keys")
    assert store.get_bytes(bucket, "team.bin") == b"signed with the team keys"
    with pytest.raises(modelhaul.AccessDenied, match=r"profile 'stale'.*the secret key is wrong"):
        S3Store(load_profile("stale")).get_bytes(bucket, "team.bin")


# botocore refreshes RefreshableCredentials once fewer than this many seconds are left
# (its advisory window; a credential_process gets the default), without blocking the other
# threads, which go on with the old ones meanwhile.
ADVISORY = RefreshableCredentials._advisory_refresh_timeout
# How long each set of credentials the test hands out stays outside that window.
LIFETIME = 2.0


def test_temporary_credentials_are_refreshed(
    tmp_path: Path,
    env: dict[str, str],
    store: S3Store,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials from a ~/.aws profile that expire soon are fetched again during one
    transfer, not reused until they fail: a long transfer outlives one-hour tokens.

    The profile's credential_process logs when it runs and hands out credentials that enter
    botocore's refresh window LIFETIME seconds later; one throttled download outlasts
    several lifetimes. A second call that comes only once the first credentials are due
    shows a refresh (a new session per request or per file would call it at once, and
    credentials frozen at the start would never call it again).
    """
    calls = tmp_path / "calls"
    script = tmp_path / "creds.py"
    script.write_text(
        "import datetime, json, time\n"
        f"with open({str(calls)!r}, 'a') as fh:\n"
        "    fh.write(f'{time.time()}\\n')\n"
        "exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(\n"
        f"    seconds={ADVISORY + LIFETIME})\n"
        f"print(json.dumps({{'Version': 1, 'AccessKeyId': {ACCESS_KEY!r}, "
        f"'SecretAccessKey': {SECRET_KEY!r}, 'Expiration': exp.isoformat()}}))\n"
    )
    aws = Path(env["HOME"]) / ".aws"
    aws.mkdir()
    (aws / "config").write_text(
        f"[profile rotating]\ncredential_process = {sys.executable} {script}\n"
    )
    src = make_file(tmp_path / "r.bin", 16 * MiB)
    store.put(bucket, "r.bin", src.read_bytes())  # with the test's own static keys
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    profile = load_profile("rotating")
    assert profile.aws_profile == "rotating" and profile.access_key_id is None
    cfg = TransferConfig(part_size=MiB, concurrency=2, bandwidth_limit=2 * MiB)

    started = time.time()
    modelhaul.copy(f"s3://{bucket}/r.bin", tmp_path / "r.out", profile=profile, config=cfg)
    finished = time.time()

    assert (tmp_path / "r.out").read_bytes() == src.read_bytes()
    times = [float(line) for line in calls.read_text().split()]
    assert finished - started > 3 * LIFETIME, "the download was too short to need a refresh"
    assert started <= times[0] < started + LIFETIME
    assert len(times) >= 3 and times[-1] < finished, times  # refreshed during the transfer
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= LIFETIME, gaps  # each time because the last ones were due


def test_idle_workers_split_the_tail(tmp_path: Path, store: S3Store, bucket: str) -> None:
    """One huge range must not hold a file at 99%: idle workers take halves of it."""
    src = make_file(tmp_path / "t.bin", 32 * MiB, seed=8)
    modelhaul.copy(src, f"s3://{bucket}/t.bin")
    config = TransferConfig(part_size=32 * MiB, concurrency=4, bandwidth_limit=24 * MiB)
    job = DownloadJob(store, bucket, "t.bin", tmp_path / "t.out")
    stats = Engine(config, 4).run([job])
    assert (tmp_path / "t.out").read_bytes() == src.read_bytes()
    assert job._numbers >= 3  # the one planned range was split for idle workers
    assert stats.bytes == 32 * MiB  # and no byte was fetched twice


def test_memory_budget_bounds_buffered_bytes(tmp_path: Path, bucket: str) -> None:
    files = [make_file(tmp_path / "in" / f"f{i}.bin", 12 * MiB, seed=i) for i in range(4)]
    budget = 11 * MiB
    stats = modelhaul.copy(
        tmp_path / "in",
        f"s3://{bucket}/in/",
        recursive=True,
        config=TransferConfig(
            part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=8, memory_budget=budget
        ),
    )
    assert 0 < stats.peak_buffer_bytes <= budget
    stats = modelhaul.copy(
        tmp_path / "in",
        f"s3://{bucket}/in2/",
        recursive=True,
        config=TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=3),
    )
    assert stats.peak_buffer_bytes <= 3 * 5 * MiB
    out = tmp_path / "out"
    modelhaul.copy(f"s3://{bucket}/in2/", out, recursive=True)
    for f in files:
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_peak_rss_of_a_large_upload_is_bounded(
    tmp_path: Path, env: dict[str, str], bucket: str
) -> None:
    """Memory does not grow with the file: 160 MiB up with 4 x 8 MiB parts stays under
    the interpreter's baseline plus concurrency x part size (and some slack)."""
    import subprocess

    src = make_file(tmp_path / "m.bin", 160 * MiB, seed=6)
    code = (
        "import resource, sys, json, modelhaul\n"
        "from modelhaul import TransferConfig\n"
        "import boto3, botocore  # the baseline includes the client libraries\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "cfg = TransferConfig(part_size=8 << 20, concurrency=4)\n"
        "modelhaul.copy(sys.argv[1], sys.argv[2], config=cfg)\n"
        "modelhaul.copy(sys.argv[2], sys.argv[1] + '.back', config=cfg)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'base': base, 'peak': peak}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(src), f"s3://{bucket}/m.bin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rss = json.loads(out.stdout)
    grown_mib = (rss["peak"] - rss["base"]) / 1024
    assert grown_mib <= 4 * 8 + 48, rss
    assert Path(str(src) + ".back").read_bytes() == src.read_bytes()
    os.unlink(str(src) + ".back")
