"""Bad input gets its own error class, a message that says what to do, and loses nothing."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig, load_profile
from tests.conftest import SECRET_KEY, make_file, run_cli

MiB = 1024 * 1024
FAST = TransferConfig(max_attempts=2, backoff_base=0.01, connect_timeout=1, stall_timeout=2)


def _store(**overrides: object) -> S3Store:
    return S3Store(load_profile(**overrides), connect_timeout=1, read_timeout=2)  # type: ignore[arg-type]


def test_wrong_secret_key(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    bad = _store(secret_access_key="not-the-secret-at-all")
    dest = tmp_path / "x.bin"
    with pytest.raises(modelhaul.AccessDenied) as info:
        modelhaul.copy(f"s3://{bucket}/x.bin", dest, src_store=bad, config=FAST)
    assert "secret key is wrong" in str(info.value)
    assert info.value.code == "SignatureDoesNotMatch" and info.value.status == 403
    assert "not-the-secret-at-all" not in str(info.value)
    assert not dest.exists()
    src = make_file(tmp_path / "up.bin", 1000)
    with pytest.raises(PermissionError):  # the built-in base works too
        modelhaul.copy(src, f"s3://{bucket}/up.bin", dst_store=bad, config=FAST)


def test_unknown_access_key(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    bad = _store(access_key_id="nobody", secret_access_key="whatever-secret")
    with pytest.raises(modelhaul.AccessDenied, match="access key id is unknown"):
        modelhaul.copy(f"s3://{bucket}/x", tmp_path / "x", src_store=bad, config=FAST)


def test_missing_bucket(tmp_path: Path, env: dict[str, str]) -> None:
    dest = tmp_path / "out" / "x.bin"
    with pytest.raises(modelhaul.NoSuchBucket, match="does not exist") as info:
        modelhaul.copy("s3://no-such-bucket-here/x.bin", dest, config=FAST)
    assert info.value.bucket == "no-such-bucket-here"
    assert isinstance(info.value, FileNotFoundError)
    assert not dest.exists() and not dest.parent.exists()
    src = make_file(tmp_path / "up.bin", 1000)
    with pytest.raises(modelhaul.NoSuchBucket):
        modelhaul.copy(src, "s3://no-such-bucket-here/up.bin", config=FAST)


def test_missing_key(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    with pytest.raises(modelhaul.NoSuchKey, match="does not exist"):
        modelhaul.copy(f"s3://{bucket}/nothing.bin", tmp_path / "n.bin", config=FAST)
    with pytest.raises(modelhaul.NoSuchKey, match="no objects under"):
        modelhaul.copy(f"s3://{bucket}/empty/", tmp_path / "n", recursive=True, config=FAST)
    assert not (tmp_path / "n.bin").exists()


def test_missing_local_source(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    with pytest.raises(modelhaul.LocalFileNotFound):
        modelhaul.copy(tmp_path / "absent.bin", f"s3://{bucket}/a", config=FAST)


def test_unreachable_endpoint(tmp_path: Path, env: dict[str, str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = _store(endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(modelhaul.EndpointUnreachable, match=f"127.0.0.1:{port}") as info:
        modelhaul.copy("s3://some-bucket/x", tmp_path / "x", src_store=bad, config=FAST)
    assert "modelhaul doctor" in info.value.hint
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "uri", ["s3://", "s3:///key", "gs://bucket/key", "s3://UPPER_case/x", "s3://ab/x"]
)
def test_malformed_uri(tmp_path: Path, env: dict[str, str], uri: str) -> None:
    with pytest.raises(modelhaul.InvalidURI) as info:
        modelhaul.copy(uri, tmp_path / "x")
    assert info.value.hint
    assert isinstance(info.value, ValueError)


def test_local_to_local_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(modelhaul.InvalidURI, match="local paths"):
        modelhaul.copy(tmp_path / "a", tmp_path / "b")


def test_disk_full_via_file_size_limit(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    src = make_file(tmp_path / "big.bin", 12 * MiB, seed=2)
    modelhaul.copy(src, f"s3://{bucket}/big.bin")
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, 4 * MiB))

    proc = subprocess.run(
        [sys.executable, "-m", "modelhaul", "cp", f"s3://{bucket}/big.bin", str(out / "big.bin")],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "DiskFull" in proc.stderr and "no space left" in proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "big.bin").exists()
    assert list(out.iterdir()) == []


def test_disk_full_on_tiny_tmpfs(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        src = make_file(tmp_path / "f.bin", 6 * MiB, seed=3)
        modelhaul.copy(src, f"s3://{bucket}/f.bin")
        with pytest.raises(modelhaul.DiskFull) as info:
            modelhaul.copy(f"s3://{bucket}/f.bin", mnt / "f.bin")
        assert info.value.needed == 6 * MiB
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_cli_error_is_a_message_not_a_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    bad_env = dict(env, AWS_SECRET_ACCESS_KEY="wrong-" + SECRET_KEY)
    for verbosity in ([], ["-vvv"]):
        proc = run_cli(
            *verbosity, "cp", "s3://shared-bucket/x", str(tmp_path / "x"), env=bad_env, check=False
        )
        assert proc.returncode == 1
        assert "error: AccessDenied" in proc.stderr and "hint:" in proc.stderr
        assert SECRET_KEY not in proc.stderr + proc.stdout
    proc = run_cli("cp", "gs://x/y", str(tmp_path / "x"), env=env, check=False)
    assert proc.returncode == 2 and "error: InvalidURI" in proc.stderr


def test_no_credentials(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(modelhaul.NoCredentials, match="no credentials"):
        modelhaul.copy("s3://shared-bucket/x", tmp_path / "x", config=FAST)
