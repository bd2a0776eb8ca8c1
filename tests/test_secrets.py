"""Secrets never show: every CLI command at -vvv (botocore's wire log included), with the
secret key and a session token known to the test, in the environment and in the config
file, on success and on failure; and what modelhaul creates to hold credentials or cached
weights is readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer
from tests.conftest import ACCESS_KEY, SECRET_KEY, make_file, run_cli

TOKEN = "IQoJb3JpZ2luX2VjEXAMPLEmhTOKEN0123456789abcdefSECRET"
FILE_SECRET = "mh-config-file-secret-9876543210zyxw"


def _commands(tmp: Path, bucket: str) -> list[list[str]]:
    src = make_file(tmp / "src.bin", 6 * 1024 * 1024 + 17, seed=3)
    model = tmp / "model"
    make_file(model / "weights.bin", 300_000, seed=4)
    (model / "config.json").write_text("{}")
    cache = str(tmp / "cache")
    mirror = f"s3://{bucket}/m"
    return [
        ["cp", str(src), f"s3://{bucket}/a.bin", "--part-size", "5MiB"],
        ["cp", f"s3://{bucket}/a.bin", str(tmp / "a.out")],
        ["cp", f"s3://{bucket}/a.bin", f"s3://{bucket}/b.bin"],
        ["cp", f"s3://{bucket}/missing.bin", str(tmp / "m.out")],
        ["ls", "--objects", f"s3://{bucket}/", "-r"],
        ["uploads", "ls", f"s3://{bucket}/"],
        ["uploads", "abort", f"s3://{bucket}/", "--older-than", "0"],
        ["doctor", f"s3://{bucket}/"],
        ["push", str(model), mirror, "--repo", "acme/secret", "--revision", "v1"],
        ["ls", "acme/secret", "--mirror", mirror],
        ["ls", "--mirror", mirror],
        ["pull", "acme/secret", "--mirror", mirror, "--origin", "none", "--cache-dir", cache],
        ["pull", "acme/nope", "--mirror", mirror, "--origin", "none", "--cache-dir", cache],
        ["cache", "ls", "--cache-dir", cache],
        ["cache", "verify", "--cache-dir", cache],
        ["cache", "clean", "--cache-dir", cache, "--older-than", "0s"],
    ]


def _assert_clean(text: str, what: str) -> None:
    for secret in (SECRET_KEY, TOKEN, FILE_SECRET):
        assert secret not in text, f"{what} leaked a secret:\n{text[-3000:]}"
        # Long fragments too (a secret split by a line wrap or quoted piecewise).
        assert secret[:16] not in text and secret[-16:] not in text, what


def _assert_signed_with_token(text: str, what: str) -> None:
    """The wire log shows a request signed with the session token: the secrets were in
    play where the log could have shown them, so a clean log means something."""
    assert "Sending http request" in text, f"{what}: no wire log at -vvv:\n{text[-3000:]}"
    assert "Authorization" in text and "X-Amz-Security-Token" in text, what


@pytest.mark.parametrize("where", ["environment", "config-file"])
def test_no_secret_in_any_output_at_vvv(
    where: str, tmp_path: Path, env: dict[str, str], bucket: str, server: EmbeddedServer
) -> None:
    """A store whose secret key and session token the test knows: whether the token is
    accepted or refused, neither appears in stdout, stderr, logs or tracebacks."""
    run_env = dict(env)
    if where == "environment":
        run_env["AWS_SESSION_TOKEN"] = TOKEN
    else:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            run_env.pop(name, None)
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            "[profiles.lab]\n"
            'provider = "seaweedfs"\n'
            f'endpoint_url = "{server.endpoint_url}"\n'
            f'access_key_id = "{ACCESS_KEY}"\n'
            f'secret_access_key = "{SECRET_KEY}"\n'
            f'session_token = "{TOKEN}"\n'
            "[profiles.wrong]\n"
            'provider = "seaweedfs"\n'
            f'endpoint_url = "{server.endpoint_url}"\n'
            f'access_key_id = "{ACCESS_KEY}"\n'
            f'secret_access_key = "{FILE_SECRET}"\n'
        )
        run_env["MODELHAUL_CONFIG"] = str(cfg)
        run_env["MODELHAUL_PROFILE"] = "lab"
    for args in _commands(tmp_path, bucket):
        proc = run_cli("-vvv", *args, env=run_env, check=False, timeout=120)
        out = proc.stdout + proc.stderr
        _assert_clean(out, " ".join(args))
        if args[0] != "cache":  # the cache commands never talk to the store
            _assert_signed_with_token(out, " ".join(args))
    if where == "config-file":
        # A wrong secret from the file: refused, and the refusal does not show it.
        proc = run_cli("-vvv", "--profile", "wrong", "ls", "--objects", f"s3://{bucket}/",
                       env=run_env, check=False)  # fmt: skip
        assert proc.returncode != 0
        _assert_clean(proc.stdout + proc.stderr, "wrong secret")


def test_no_secret_in_successful_wire_logs(
    tmp_path: Path, env: dict[str, str], bucket: str, server: EmbeddedServer
) -> None:
    """Credentials the store accepts, from a config file (not the environment), so every
    command runs to the end with botocore's wire log on."""
    run_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[profiles.lab]\n"
        'provider = "seaweedfs"\n'
        f'endpoint_url = "{server.endpoint_url}"\n'
        f'access_key_id = "{ACCESS_KEY}"\n'
        f'secret_access_key = "{SECRET_KEY}"\n'
    )
    run_env.update(MODELHAUL_CONFIG=str(cfg), MODELHAUL_PROFILE="lab")
    failed = []
    for args in _commands(tmp_path, bucket):
        proc = run_cli("-vvv", *args, env=run_env, check=False, timeout=120)
        _assert_clean(proc.stdout + proc.stderr, " ".join(args))
        if proc.returncode != 0:
            failed.append(args[0:2])
    # Only the two commands asked for something that does not exist fail.
    assert failed == [["cp", f"s3://{bucket}/missing.bin"], ["pull", "acme/nope"]], failed


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_credentials_and_cache_are_owner_only(
    tmp_path: Path, env: dict[str, str], bucket: str, server: EmbeddedServer
) -> None:
    # The embedded server's state file holds its secret key.
    data = Path(server.data_dir)
    assert _mode(data) & 0o077 == 0, oct(_mode(data))
    for f in data.glob("modelhaul-server*"):
        assert _mode(f) & 0o077 == 0, (f, oct(_mode(f)))
    # A cache the pull creates: nobody but its owner can look inside.
    src = tmp_path / "model"
    make_file(src / "w.bin", 100_000, seed=1)
    modelhaul.push(src, f"s3://{bucket}/m", "acme/modes", revision="v1")
    old = os.umask(0o022)
    try:
        cache = tmp_path / "fresh" / "cache"
        modelhaul.pull("acme/modes", cache_dir=cache, mirrors=[f"s3://{bucket}/m"], origins=[])
    finally:
        os.umask(old)
    assert _mode(cache) & 0o077 == 0, oct(_mode(cache))
    # The resume journals (they name buckets and keys) live in an owner-only folder too.
    state = Path(env["XDG_STATE_HOME"]) / "modelhaul"
    if state.exists():
        assert _mode(state) & 0o077 == 0, oct(_mode(state))
