"""A SeaweedFS cluster on one machine: master, volume servers, filer and S3 gateway as
separate processes, the way a real deployment runs them (``weed mini`` runs them all in
one). Tests and benchmarks use it to see what a single process hides: a volume server that
dies mid-read, chunks spread over servers, replicas.

Every process listens on loopback; their pids are in ``cluster.json`` in the data folder,
and :func:`stop_cluster` signals a pid only after checking that its command line still is
that process of this cluster (a reboot or pid reuse leaves a stale file, never a kill of a
stranger).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._core.errors import ServerStartError
from .._core.process import pid_alive
from .._core.uri import parse_s3
from .embedded import (
    _children,
    _command_line,
    _free_port,
    _reserve_port,
    _s3_answers,
    data_home,
    export_lines,
    s3_env,
    weed_binary,
)

__all__ = [
    "ClusterServer",
    "cluster_status",
    "default_cluster_dir",
    "holds_cluster",
    "start_cluster",
    "stop_cluster",
]

STATE = "cluster.json"


@dataclass(frozen=True)
class ClusterServer:
    """A running SeaweedFS cluster.

    Attributes:
        data_dir: where every process keeps its data and log.
        host: the loopback address.
        port: the S3 gateway's port.
        access_key_id: the credentials the gateway accepts.
        secret_access_key: the secret it accepts (never printed).
        processes: role (``master``, ``volume1`` ...) to pid.
        replication: the master's default replication (``001``: a second copy on another
            volume server).
    """

    data_dir: str
    host: str
    port: int
    access_key_id: str
    secret_access_key: str = field(repr=False)
    processes: dict[str, int] = field(default_factory=dict)
    replication: str = "001"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment variables that point any S3 tool at the cluster's gateway."""
        return s3_env(self.endpoint_url, self.access_key_id, self.secret_access_key)

    def export_lines(self) -> str:
        return export_lines(self.env())

    def is_running(self) -> bool:
        """Every process of the cluster runs (and is still ours), and the gateway answers."""
        return all(
            pid_alive(pid) and _ours(self, role, pid) for role, pid in self.processes.items()
        ) and _s3_answers(self.host, self.port, timeout=1.0)

    def volumes(self) -> list[str]:
        return sorted(r for r in self.processes if r.startswith("volume"))

    def kill(self, role: str) -> None:
        """SIGKILL one process of the cluster (a volume server dying mid-read)."""
        pid = self.processes[role]
        if _ours(self, role, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(pid, 10)


def _tag(data_dir: str, role: str) -> str:
    # Each process's data folder names the cluster and the role: what stop checks.
    return str(Path(data_dir, role))


def _ours(cluster: ClusterServer, role: str, pid: int) -> bool:
    command = _command_line(pid)
    return command is not None and "weed" in command and _tag(cluster.data_dir, role) in command


def _wait(pid: int, timeout: float) -> None:
    proc = _children.get(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                _children.pop(pid, None)
                return
        elif not pid_alive(pid):
            return
        else:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def default_cluster_dir() -> Path:
    """``$XDG_DATA_HOME/modelhaul/cluster`` (``~/.local/share/modelhaul/cluster``)."""
    return data_home() / "cluster"


def holds_cluster(data_dir: Path) -> bool:
    """Whether ``data_dir`` is a cluster's folder (its state file is there)."""
    return (data_dir.expanduser().resolve() / STATE).exists()


def _read_state(data_dir: Path) -> ClusterServer | None:
    try:
        return ClusterServer(**json.loads((data_dir / STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def cluster_status(data_dir: Path) -> ClusterServer | None:
    """The cluster started from ``data_dir`` if all of it runs, else None."""
    cluster = _read_state(data_dir.expanduser().resolve())
    return cluster if cluster is not None and cluster.is_running() else None


def start_cluster(
    data_dir: Path,
    *,
    volumes: int = 2,
    replication: str = "001",
    host: str = "127.0.0.1",
    port: int | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    buckets: Sequence[str] = (),
    timeout: float = 90.0,
) -> ClusterServer:
    """Start a master, ``volumes`` volume servers, a filer and an S3 gateway, and wait until
    the gateway answers and the buckets exist.

    If the whole cluster of ``data_dir`` already runs, it is returned as it is (with the
    buckets made); if only part of it runs (a process died), the rest is stopped and the
    cluster started again on its data.

    Args:
        port: the gateway's S3 port; None picks a free one (as for every other process).

    Raises:
        ServerStartError: the binary is missing, the port is taken, a process exited, or it
            did not start in time.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for b in buckets:
        parse_s3(f"s3://{b}")
    running = cluster_status(data_dir)
    if running is not None:
        _wait_ready(running, buckets, timeout)
        return running
    stop_cluster(data_dir)  # what is left of a cluster that lost a process
    binary = weed_binary()
    used: set[int] = set()
    if port is not None:
        _reserve_port(host, port, used)

    def free() -> int:
        return _free_port(host, used)

    key_id = access_key_id or "mh" + secrets.token_hex(8)
    secret = secret_access_key or secrets.token_urlsafe(30)
    master, master_grpc = free(), free()
    filer, filer_grpc = free(), free()
    s3, s3_grpc = port if port is not None else free(), free()
    maddr = f"{host}:{master}.{master_grpc}"
    identities = {
        "identities": [
            {
                "name": "modelhaul",
                "credentials": [{"accessKey": key_id, "secretKey": secret}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config = data_dir / "s3.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identities, fh)
    ip = [f"-ip={host}", f"-ip.bind={host}"]
    plans: list[tuple[str, list[str]]] = [
        ("master", ["master", f"-mdir={_tag(str(data_dir), 'master')}", f"-port={master}",
                    f"-port.grpc={master_grpc}", f"-defaultReplication={replication}",
                    "-volumeSizeLimitMB=256", *ip]),
    ]  # fmt: skip
    for n in range(1, volumes + 1):
        role = f"volume{n}"
        # A replica in another rack (replication x1x) needs racks to put it in.
        rack = f"rack{n}" if replication[1:2] not in ("", "0") else "rack1"
        plans.append((role, ["volume", f"-dir={_tag(str(data_dir), role)}", f"-port={free()}",
                             f"-port.grpc={free()}", f"-mserver={maddr}", "-max=200",
                             "-preStopSeconds=0", f"-rack={rack}", *ip]))  # fmt: skip
    plans.append(("filer", ["filer", f"-defaultStoreDir={_tag(str(data_dir), 'filer')}",
                            f"-port={filer}", f"-port.grpc={filer_grpc}", f"-master={maddr}",
                            *ip]))  # fmt: skip
    plans.append(("s3", ["s3", f"-port={s3}", f"-port.grpc={s3_grpc}",
                         f"-filer={host}:{filer}.{filer_grpc}", f"-config={config}",
                         "-autoCreateBucket=false", "-metricsPort=0",
                         # Its Iceberg and Lance listeners default to fixed ports (8181,
                         # 9101): a second cluster on the machine would fail to start.
                         "-port.iceberg=0", "-port.lance=0",
                         *ip]))  # fmt: skip
    # The gateway's command line names its config, which lives in the cluster's folder.
    processes: dict[str, int] = {}
    cluster = ClusterServer(str(data_dir), host, s3, key_id, secret, processes, replication)
    try:
        for role, args in plans:
            if role != "s3":
                Path(_tag(str(data_dir), role)).mkdir(parents=True, exist_ok=True)
            with (data_dir / f"{role}.log").open("ab") as log:
                proc = subprocess.Popen(
                    [binary, *args],
                    cwd=data_dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            _children[proc.pid] = proc
            processes[role] = proc.pid
            _write_state(cluster)
        _wait_ready(cluster, buckets, timeout)
    except BaseException:
        stop_cluster(data_dir)
        raise
    return cluster


def _write_state(cluster: ClusterServer) -> None:
    path = Path(cluster.data_dir, STATE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(cluster), fh)


def _wait_ready(cluster: ClusterServer, buckets: Sequence[str], timeout: float) -> None:
    from .._core.config import load_profile
    from .._core.errors import ModelhaulError
    from .s3 import S3Store

    deadline = time.monotonic() + timeout
    store = S3Store(
        load_profile(env=cluster.env(), config_file=Path(os.devnull)),
        connect_timeout=2,
        read_timeout=10,
    )
    pending = list(buckets)
    probe = f"mh-probe-{secrets.token_hex(4)}"
    while time.monotonic() < deadline:
        for role, pid in cluster.processes.items():
            proc = _children.get(pid)
            if proc is not None and proc.poll() is not None:
                log = Path(cluster.data_dir, f"{role}.log")
                raise ServerStartError(
                    f"SeaweedFS {role} exited with status {proc.returncode} during start-up:\n"
                    + log.read_text(errors="replace")[-1500:],
                    hint=f"read {log}; a port may be taken or the folder unusable",
                )
        if not _s3_answers(cluster.host, cluster.port, timeout=1.0):
            time.sleep(0.3)
            continue
        try:
            client = store.client()
            for b in list(pending):
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=b)
                pending.remove(b)
            # Writable end to end: the volume servers have joined and grown volumes.
            target = buckets[0] if buckets else None
            if target is None:
                client.create_bucket(Bucket=probe)
                target = probe
            store.put(target, ".modelhaul-probe", b"ok")
            store.delete(target, ".modelhaul-probe")
            if target == probe:
                client.delete_bucket(Bucket=probe)
            return
        except (ModelhaulError, Exception):
            time.sleep(0.5)
    raise ServerStartError(
        f"the SeaweedFS cluster in {cluster.data_dir} was not writable within {timeout:.0f}s",
        hint=f"read the *.log files in {cluster.data_dir}",
    )


def stop_cluster(data_dir: Path, *, timeout: float = 2.0) -> bool:
    """Stop every process of the cluster in ``data_dir``; return whether any was running.

    A pid is signalled only if its command line still is that process of this cluster.
    All get SIGTERM at once (one by one, a volume server waits for a master that is
    already gone); what still runs after ``timeout`` seconds gets SIGKILL (the filer of
    SeaweedFS 4.48 ignores SIGTERM for longer than 10 s; its leveldb store has a log).
    """
    data_dir = data_dir.expanduser().resolve()
    path = data_dir / STATE
    cluster = _read_state(data_dir)
    if cluster is None:
        return False
    live = [
        (role, pid)
        for role, pid in cluster.processes.items()
        if pid_alive(pid) and _ours(cluster, role, pid)
    ]
    for _, pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for role, pid in live:
        _wait(pid, max(0.0, deadline - time.monotonic()))
        if pid_alive(pid) and _ours(cluster, role, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(pid, 5)
    path.unlink(missing_ok=True)
    return bool(live)
