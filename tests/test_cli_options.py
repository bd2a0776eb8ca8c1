"""The common options (-q, -v, --json, --profile) before and after every command, and the one
``ls``: through the real ``modelhaul`` command, except the walk over the command tree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest

from modelhaul import EmbeddedServer
from tests.conftest import ACCESS_KEY, SECRET_KEY, make_file, run_cli

MiB = 1024 * 1024
COMMON = {"-q", "--quiet", "-v", "--verbose", "--json", "--profile"}


def _leaves(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += _leaves(command, f"{path} {name}")
        else:
            found.append((f"{path} {name}", command))
    return found


def test_every_command_takes_the_common_options() -> None:
    from modelhaul._cli.main import cli

    leaves = _leaves(cli, "modelhaul")
    assert len(leaves) == 19, [p for p, _ in leaves]
    for path, command in leaves:
        opts = {o for p in command.params for o in p.opts}
        assert opts >= COMMON, (path, COMMON - opts)
    assert {o for p in cli.params for o in p.opts} >= COMMON


def test_one_ls_command() -> None:
    """``ls`` is one command, defined in one module, that lists both repos and objects."""
    from modelhaul._cli import ls
    from modelhaul._cli.main import cli

    assert cli.get_command(click.Context(cli), "ls") is ls.ls_command
    opts = {o for p in ls.ls_command.params for o in p.opts}
    assert {"--objects", "-r", "--mirror"} <= opts


def test_quiet_after_the_command(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    """`cp --quiet` is what `aws s3 cp --quiet` users type: accepted, and silent."""
    src = make_file(tmp_path / "q.bin", 2 * MiB)
    loud = run_cli("cp", str(src), f"s3://{bucket}/loud.bin", env=env)
    assert "copied 1 file(s)" in loud.stderr
    for flag in ("-q", "--quiet"):
        out = run_cli("cp", str(src), f"s3://{bucket}/q{flag}.bin", flag, env=env)
        assert (out.stdout, out.stderr) == ("", "")
    back = run_cli("cp", "-q", f"s3://{bucket}/q-q.bin", str(tmp_path / "back.bin"), env=env)
    assert (back.stdout, back.stderr) == ("", "")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_json_before_or_after_the_command(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    src = make_file(tmp_path / "j.bin", 1 * MiB)
    before = run_cli("--json", "cp", str(src), f"s3://{bucket}/a.bin", env=env)
    after = run_cli("cp", str(src), f"s3://{bucket}/b.bin", "--json", env=env)
    for out in (before, after):
        summary = json.loads(out.stdout)
        assert summary["bytes"] == MiB and summary["files"] == 1
        assert "copied" not in out.stderr


def test_a_command_without_json_output_refuses_json(tmp_path: Path, env: dict[str, str]) -> None:
    for args in (
        ["--json", "server", "env"],
        ["server", "env", "--json"],
        ["--json", "cache", "verify", "--cache-dir", str(tmp_path / "c")],
    ):
        proc = run_cli(*args, env=env, check=False)
        assert proc.returncode == 2, args
        assert "has no JSON output: leave out --json" in proc.stderr, args
        assert proc.stdout == "", args
    assert not (tmp_path / "c").exists()  # refused before the command ran


def test_verbose_counts_add_up(env: dict[str, str], bucket: str) -> None:
    """-v before and -vv after the command is -vvv: botocore's wire log is on."""
    target = f"s3://{bucket}/"
    three = run_cli("-v", "ls", "--objects", target, "-vv", env=env)
    assert "DEBUG botocore" in three.stderr
    one = run_cli("-v", "ls", "--objects", target, env=env)
    two = run_cli("ls", "--objects", target, "-vv", env=env)
    for out in (one, two):
        assert "DEBUG botocore" not in out.stderr
    # -vv logs the traceback of a failure; -v and -v together are -vv.
    missing = ["cp", f"s3://{bucket}/missing.bin", os.devnull]
    split = run_cli("-v", *missing, "-v", env=env, check=False)
    assert split.returncode == 1 and "Traceback" in split.stderr
    alone = run_cli("-v", *missing, env=env, check=False)
    assert alone.returncode == 1 and "Traceback" not in alone.stderr


def test_profile_after_the_command_wins(
    tmp_path: Path, env: dict[str, str], bucket: str, server: EmbeddedServer
) -> None:
    run_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[profiles.good]\n"
        'provider = "seaweedfs"\n'
        f'endpoint_url = "{server.endpoint_url}"\n'
        f'access_key_id = "{ACCESS_KEY}"\n'
        f'secret_access_key = "{SECRET_KEY}"\n'
    )
    run_env.update(MODELHAUL_CONFIG=str(cfg), MODELHAUL_PROFILE="absent-env")
    src = make_file(tmp_path / "p.bin", 1000)
    run_cli("--profile", "good", "cp", str(src), f"s3://{bucket}/p.bin", env=run_env)
    target = f"s3://{bucket}/"
    won = run_cli("--profile", "absent-flag", "ls", "--objects", target, "--profile", "good",
                  env=run_env)  # fmt: skip
    assert "p.bin" in won.stdout
    lost = run_cli("--profile", "good", "ls", "--objects", target, "--profile", "absent-flag",
                   env=run_env, check=False)  # fmt: skip
    assert lost.returncode == 2 and "absent-flag" in lost.stderr and "p.bin" not in lost.stdout
    # Before the command, the flag still wins over MODELHAUL_PROFILE.
    env_only = run_cli("ls", "--objects", target, env=run_env, check=False)
    assert env_only.returncode == 2 and "absent-env" in env_only.stderr


def test_ls_objects_text_and_json(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    src = make_file(tmp_path / "o.bin", 3000)
    for key in ("top.bin", "dir/a.bin", "dir/sub/b.bin"):
        run_cli("-q", "cp", str(src), f"s3://{bucket}/{key}", env=env)
    text = run_cli("ls", "--objects", f"s3://{bucket}/", env=env).stdout.splitlines()
    assert len(text) == 2
    assert text[0].split() == ["DIR", "dir/"]
    assert text[1].split()[0] == "3,000" and text[1].endswith("  top.bin")
    rows = json.loads(run_cli("ls", "--objects", f"s3://{bucket}/", "--json", env=env).stdout)
    assert [r.get("prefix") or r["key"] for r in rows] == ["dir/", "top.bin"]
    deep = json.loads(
        run_cli("--json", "ls", "--objects", "-r", f"s3://{bucket}/dir/", env=env).stdout
    )
    assert [(r["key"], r["size"]) for r in deep] == [("dir/a.bin", 3000), ("dir/sub/b.bin", 3000)]
    assert all(r["last_modified"] > 0 for r in deep)
    none = run_cli("ls", "--objects", env=env, check=False)
    assert none.returncode == 2 and "--objects needs s3://BUCKET/PREFIX" in none.stderr


@pytest.mark.parametrize("package", ["starlette", "uvicorn"])
def test_serve_without_the_extra_says_so_first(
    package: str, tmp_path: Path, env: dict[str, str], bucket: str
) -> None:
    """No "serving ... on http://..." line before it dies: the extra is checked first."""
    hide = tmp_path / "hide"
    hide.mkdir()
    # A None in sys.modules makes `import starlette` fail as if it were not installed.
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{package!r}] = None\n")
    run_env = dict(env, PYTHONPATH=str(hide))
    proc = run_cli("serve", "--mirror", f"s3://{bucket}/m", "--origin", "none", "--port", "0",
                   env=run_env, check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert (
        f"error: MissingExtra: modelhaul serve needs the {package} package, which is not "
        "installed" in proc.stderr
    )
    assert "pip install 'modelhaul[serve]'" in proc.stderr
    assert "serving" not in proc.stderr + proc.stdout
