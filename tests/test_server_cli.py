"""The embedded store through the CLI, ``doctor``, and ``uploads`` housekeeping."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import modelhaul
from modelhaul import S3Store
from tests.conftest import SECRET_KEY, make_file, run_cli

MiB = 1024 * 1024


def test_server_start_status_stop(tmp_path: Path, env: dict[str, str]) -> None:
    data = tmp_path / "srv"
    out = run_cli("server", "start", "--data-dir", str(data), "--bucket", "demo-bucket", env=env)
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", out.stdout, re.M))
    assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(exports)
    state = data / "modelhaul-server.json"
    assert state.stat().st_mode & 0o777 == 0o600  # it holds the secret
    try:
        status = run_cli("server", "status", "--data-dir", str(data), env=env)
        assert "running" in status.stdout and exports["AWS_ENDPOINT_URL"] in status.stdout
        # Any S3 tool pointed at the printed lines works: use modelhaul itself.
        child_env = dict(env, **exports)
        src = make_file(tmp_path / "f.bin", 2 * MiB)
        run_cli("cp", str(src), "s3://demo-bucket/f.bin", env=child_env)
        again = run_cli("server", "start", "--data-dir", str(data), env=env)  # idempotent
        assert exports["AWS_ENDPOINT_URL"] in again.stdout
    finally:
        stopped = run_cli("server", "stop", "--data-dir", str(data), env=env)
    assert "stopped" in stopped.stdout
    assert (
        run_cli("server", "status", "--data-dir", str(data), env=env, check=False).returncode == 1
    )
    assert not state.exists()


def test_server_refuses_a_taken_port(
    tmp_path: Path, env: dict[str, str], server: modelhaul.EmbeddedServer
) -> None:
    proc = run_cli(
        "server",
        "start",
        "--data-dir",
        str(tmp_path / "s2"),
        "--port",
        str(server.port),
        env=env,
        check=False,
    )
    assert proc.returncode == 1 and "already in use" in proc.stderr


def test_doctor_all_green(env: dict[str, str], bucket: str) -> None:
    out = run_cli("doctor", f"s3://{bucket}", env=env)
    text = out.stdout + out.stderr
    for name in (
        "endpoint",
        "credentials",
        "clock",
        "bucket",
        "list",
        "put",
        "get",
        "multipart",
        "delete",
    ):
        assert re.search(rf"ok\s+{name}:", text), (name, text)


def test_doctor_names_each_problem(env: dict[str, str], bucket: str) -> None:
    bad = run_cli(
        "doctor", f"s3://{bucket}", env=dict(env, AWS_SECRET_ACCESS_KEY="wrong-secret"), check=False
    )
    text = bad.stdout + bad.stderr
    assert bad.returncode == 1 and re.search(r"FAIL\s+credentials:.*secret key is wrong", text)
    assert "fix:" in text and "wrong-secret" not in text and SECRET_KEY not in text
    missing = run_cli("doctor", "s3://no-such-bucket-x", env=env, check=False)
    assert missing.returncode == 1 and re.search(
        r"FAIL\s+bucket:.*does not exist", missing.stdout + missing.stderr
    )
    down = run_cli("doctor", env=dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9"), check=False)
    assert down.returncode == 1 and "FAIL" in down.stdout and "endpoint" in down.stdout


def test_list_and_abort_stale_uploads(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    upload_id = store.create_multipart(bucket, "stale/a.bin")
    store.upload_part(bucket, "stale/a.bin", upload_id, 1, bytearray(5 * MiB))
    listed = run_cli("uploads", "ls", f"s3://{bucket}/stale/", env=env)
    assert upload_id in listed.stdout
    kept = run_cli("uploads", "abort", f"s3://{bucket}/", "--older-than", "1d", env=env)
    assert "0 upload(s) aborted" in kept.stderr
    done = run_cli("uploads", "abort", f"s3://{bucket}/", "--older-than", "0", env=env)
    assert f"aborted stale/a.bin {upload_id}" in done.stdout
    assert store.list_uploads(bucket) == []


def test_progress_bar_on_a_terminal(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    """On a terminal, cp draws a bar with bytes, speed and the file; piped, it is quiet."""
    import pty
    import subprocess
    import sys

    src = make_file(tmp_path / "p.bin", 8 * MiB)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelhaul", "cp", str(src), f"s3://{bucket}/p.bin"],
        env=dict(env, COLUMNS="120", TERM="xterm"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "p.bin" in screen and "MB/s" in screen and "8.4" in screen  # 8.4 MB total
    piped = run_cli("cp", str(src), f"s3://{bucket}/p2.bin", env=env)
    assert "MB/s" in piped.stderr and "━" not in piped.stderr  # summary only, no bar
    quiet = run_cli("-q", "cp", str(src), f"s3://{bucket}/p3.bin", env=env)
    assert quiet.stdout == "" and quiet.stderr == ""


def test_interrupt_says_how_to_resume(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    import subprocess
    import sys
    import time

    src = make_file(tmp_path / "i.bin", 24 * MiB)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelhaul",
            "cp",
            "--bandwidth-limit",
            "4MiB",
            str(src),
            f"s3://{bucket}/i.bin",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "run the same command again to resume" in err


def _exports(text: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(\S+)$", text, re.M))


def test_env_status_stop_find_a_server_started_with_data_dir(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The data dir given to `server start` is recorded: no need to repeat --data-dir."""
    data = tmp_path / "srv"
    started = run_cli("server", "start", "--data-dir", str(data), env=env)
    try:
        printed = run_cli("server", "env", env=env)
        assert _exports(printed.stdout) == _exports(started.stdout)
        status = run_cli("server", "status", env=env)
        assert f"data in {data.resolve()}" in status.stdout
        stopped = run_cli("server", "stop", env=env, check=False)
    finally:
        modelhaul.stop_server(data)  # whatever happened above, no server outlives the test
    assert stopped.stdout == "stopped\n"
    assert run_cli("server", "status", env=env, check=False).stdout == "not running\n"
    assert not (data / "modelhaul-server.json").exists()
    registry = Path(env["XDG_STATE_HOME"]) / "modelhaul" / "servers"
    assert list(registry.iterdir()) == []


def test_two_recorded_servers_need_a_data_dir(tmp_path: Path, env: dict[str, str]) -> None:
    dirs = [tmp_path / "one", tmp_path / "two"]
    try:
        for d in dirs:
            run_cli("server", "start", "--data-dir", str(d), env=env)
        for args in (["env"], ["stop"]):
            proc = run_cli("server", *args, env=env, check=False)
            assert proc.returncode == 2, args
            assert "2 embedded servers are running" in proc.stderr
            assert "hint: say which one: --data-dir" in proc.stderr
        lines = run_cli("server", "status", env=env).stdout.splitlines()
        assert len(lines) == 2 and all(line.startswith("running: pid ") for line in lines)
        assert {line.rsplit(", data in ", 1)[1] for line in lines} == {
            str(d.resolve()) for d in dirs
        }
        assert run_cli("server", "stop", "--data-dir", str(dirs[0]), env=env).stdout == "stopped\n"
        left = run_cli("server", "env", env=env)  # one left: no flag needed again
        assert _exports(left.stdout)["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    finally:
        for d in dirs:
            modelhaul.stop_server(d)


def test_stop_never_signals_a_process_that_is_not_our_weed(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """After a reboot or pid reuse the state file names somebody else's process."""
    import json
    import subprocess

    data = (tmp_path / "srv").resolve()
    data.mkdir()
    state = data / "modelhaul-server.json"
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        record = {
            "data_dir": str(data), "pid": stranger.pid, "host": "127.0.0.1", "port": 8333,
            "access_key_id": "k", "secret_access_key": "s", "buckets": [],
        }  # fmt: skip
        state.write_text(json.dumps(record))
        out = run_cli("server", "stop", "--data-dir", str(data), env=env)
        assert stranger.poll() is None, "stop signalled a process that is not its weed"
        assert out.stdout.startswith(f"not running: the state file {state} named pid ")
        assert f"pid {stranger.pid}, which is not this server's weed but 'sleep 60'" in out.stdout
        assert "nothing was signalled" in out.stdout
        assert not state.exists()
        # The library call is as careful: a stale state is removed, the process left alone.
        state.write_text(json.dumps(record))
        assert modelhaul.stop_server(data) is False
        assert modelhaul.server_status(data) is None
        assert stranger.poll() is None and not state.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_server_start_cluster_runs_each_role_as_a_process_and_keeps_its_data(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """`server start --cluster`: master, two volume servers, filer and gateway, each a
    weed process of its own; env/status/stop find it in the default folder; a restart
    serves what was written before."""
    from modelhaul._core.process import pid_alive
    from modelhaul._store.cluster import default_cluster_dir, stop_cluster

    data = default_cluster_dir().resolve()
    assert str(data).startswith(env["HOME"])  # the test's own home, not the user's
    started = run_cli("server", "start", "--cluster", "--bucket", "models", env=env)
    try:
        exports = _exports(started.stdout)
        state = json.loads((data / "cluster.json").read_text())
        assert (data / "cluster.json").stat().st_mode & 0o777 == 0o600  # it holds the secret
        pids = state["processes"]
        assert set(pids) == {"master", "volume1", "volume2", "filer", "s3"}
        assert len(set(pids.values())) == 5
        for role, pid in pids.items():
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert command[0].endswith(b"weed") and command[1] in (
                b"master", b"volume", b"filer", b"s3"
            ), (role, command)  # fmt: skip
        assert _exports(run_cli("server", "env", env=env).stdout) == exports
        status = run_cli("server", "status", env=env)
        assert "cluster of 5 processes (2 volume servers)" in status.stdout
        assert exports["AWS_ENDPOINT_URL"] in status.stdout
        src = make_file(tmp_path / "f.bin", 6 * MiB + 3)
        run_cli("cp", str(src), "s3://models/f.bin", env=dict(env, **exports))
        again = run_cli("server", "start", "--cluster", env=env)  # running: the same one
        assert _exports(again.stdout) == exports
        stopped = run_cli("server", "stop", env=env)
    finally:
        stop_cluster(data)  # whatever happened above, no process outlives the test
    assert stopped.stdout == "stopped\n"
    assert not any(pid_alive(pid) for pid in pids.values())
    gone = run_cli("server", "status", "--data-dir", str(data), env=env, check=False)
    assert gone.returncode == 1
    restarted = run_cli("server", "start", "--cluster", "--data-dir", str(data), env=env)
    try:
        back = tmp_path / "back.bin"
        run_cli("cp", "s3://models/f.bin", str(back), env=dict(env, **_exports(restarted.stdout)))
        assert back.read_bytes() == src.read_bytes()
    finally:
        assert run_cli("server", "stop", "--data-dir", str(data), env=env).stdout == "stopped\n"


def test_server_start_cluster_refuses_fewer_volumes_than_copies(env: dict[str, str]) -> None:
    proc = run_cli("server", "start", "--cluster", "--volumes", "1", env=env, check=False)
    assert proc.returncode == 2
    assert "--replication 001 keeps 2 copies: it needs --volumes 2 or more" in proc.stderr
