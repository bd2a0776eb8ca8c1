"""Transfer benchmark: modelhaul against s5cmd and boto3 on one embedded SeaweedFS.

Run:  .venv/bin/python bench/transfer.py [--size-mib 2048] [--repeat 3] [--json-out [PATH]]

What it does, all in one run so the figures are comparable (see ../shared/DESIGN.md, "Speed"):

* starts its own SeaweedFS (``modelhaul.start_server``) in a temp dir on disk, and stops it
  at the end; working files live in the same temp dir, deleted at the end;
* writes a random file of ``--size-mib`` MiB;
* times uploads of that file with modelhaul, s5cmd, boto3 (default TransferConfig) and
  boto3 tuned, and downloads of one reference object with the same four plus the server's
  ceiling (parallel ranged GETs whose data is discarded). Repetitions are interleaved and
  the tool order rotates each repetition; ``sync`` runs before each timing and the
  destination is deleted before each download. Every tool runs as its own child process:
  the wall time is measured around the child (start-up included, equally for all), the
  peak RSS comes from ``wait4``'s rusage, and the tool's own in-process time is reported
  where it has one;
* kills a modelhaul download, then an upload, at ~50% (SIGKILL), reruns each to the end and
  reports the bytes moved by both runs over the file size (target <= 1.15), then checks the
  results byte for byte;
* prints a table, the ratios against the peers and PASS/FAIL per target;
* many small files (``--only small`` for these alone): 1,000 x 64 KiB in 20 folders and
  10,000 x 4 KiB, ``modelhaul -q cp -r`` against ``s5cmd cp`` up and down, each run a
  child under GNU time (peak RSS of that child alone), medians of ``--repeat`` with min
  and max; every upload is checked by listing, every download file by file.
* one object copied inside the store (``--only copy`` for this alone): a 1 GiB object
  (``--copy-size-mib``) copied to another key of the same bucket by ``modelhaul -q cp
  s3://... s3://...`` (a server-side CopyObject) against ``s5cmd cp s3://... s3://...``,
  each run a child under GNU time, order alternating, the destination deleted before each
  run; medians of ``--repeat`` with min and max; every copy is checked (size, and the
  SHA-256 of its bytes unless ``--no-verify``).

Figures from a machine shared with other work are noisy (up to ~20% run to run): compare
only within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
BUCKET = "bench"
HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
PY = sys.executable
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"  # GNU time, for the peak RSS of each child

UP_TOOLS = ["modelhaul", "s5cmd", "boto3-default", "boto3-tuned"]
DOWN_TOOLS = [*UP_TOOLS, "ceiling"]

# boto3 "tuned": what a user who read the docs would set.
TUNED_CHUNK = 16 * MiB
TUNED_CONCURRENCY = 16
# The server ceiling: parallel ranged GETs, the data read into a reused buffer and dropped.
CEILING_THREADS = 8
CEILING_RANGE = 16 * MiB
CEILING_BUFFER = 1 * MiB

# Targets (the issue "The transfer engine").
TARGET_DOWN_VS_S5CMD = 1.0
TARGET_DOWN_VS_BOTO3 = 1.5
TARGET_UP_VS_S5CMD = 1.0
TARGET_RESUME = 1.15
RSS_BASE_MIB = 64

# Many small files: (name, files, bytes each, folders). Targets: >= 1.0x s5cmd, up and down.
SMALL_CASES = [("1000x64KiB", 1000, 64 * 1024, 20), ("10000x4KiB", 10000, 4 * 1024, 20)]
TARGET_SMALL_VS_S5CMD = 1.0

# s3 -> s3 inside one store (issue 14 §5): one object, copied server-side. Target: >= 1.0x
# s5cmd (s5cmd time / modelhaul time).
COPY_SIZE_MIB = 1024
COPY_SRC, COPY_DST = "copy/src", "copy/dst"
TARGET_COPY_VS_S5CMD = 1.0


# ------------------------------------------------------------------------------------------
# Children: each tool runs in its own process (``transfer.py _child KIND ...``) and prints
# one JSON line. Only the standard library is imported at module level, so a child holds
# nothing but what its tool needs.
# ------------------------------------------------------------------------------------------


class _Meter:
    """Counts, in a modelhaul child under the kill-and-resume test, the bytes the engine
    reported moved and the bytes that crossed its sockets, and keeps the three figures in
    a side file the parent polls (``counted sent received``, one line, rewritten in place).

    Counted bytes are what ``TransferStats.bytes`` counts: an upload counts a part only
    once the store has taken all of it. The socket figures show what actually went out or
    came in, parts in flight at the kill included.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.counted = self.sent = self.received = 0
        self.lock = threading.Lock()

    def add(self, counted: int = 0, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.counted += counted
            self.sent += sent
            self.received += received
            line = b"%20d %20d %20d\n" % (self.counted, self.sent, self.received)
            os.pwrite(self.fd, line, 0)

    def patch_sockets(self) -> None:
        import socket

        cls = socket.socket
        sendall, send, recv_into, recv = cls.sendall, cls.send, cls.recv_into, cls.recv
        meter = self

        def p_sendall(sock: Any, data: Any, *args: Any) -> None:
            sendall(sock, data, *args)
            meter.add(sent=memoryview(data).nbytes)

        def p_send(sock: Any, data: Any, *args: Any) -> int:
            n = send(sock, data, *args)
            meter.add(sent=n)
            return n

        def p_recv_into(sock: Any, buffer: Any, *args: Any) -> int:
            n = recv_into(sock, buffer, *args)
            meter.add(received=n)
            return n

        def p_recv(sock: Any, *args: Any) -> bytes:
            data = recv(sock, *args)
            meter.add(received=len(data))
            return data

        cls.sendall, cls.send, cls.recv_into, cls.recv = p_sendall, p_send, p_recv_into, p_recv


def read_meter(fd: int) -> tuple[int, int, int]:
    """The parent's side of :class:`_Meter`: (counted, sent, received), zeros if unwritten."""
    try:
        a, b, c = (int(x) for x in os.pread(fd, 64, 0).split())
    except ValueError:
        return 0, 0, 0
    return a, b, c


def _child_modelhaul(direction: str, a: str, b: str, progress: str | None) -> dict[str, Any]:
    import modelhaul

    subscribers: list[modelhaul.ProgressSubscriber] = []
    meter: _Meter | None = None
    if progress:
        meter = _Meter(progress)
        meter.patch_sockets()

        class Counted(modelhaul.ProgressSubscriber):
            def bytes_moved(self, label: str, n: int) -> None:
                meter.add(counted=n)

        subscribers.append(Counted())
    if direction == "up":
        stats = modelhaul.copy(a, f"s3://{BUCKET}/{b}", progress=subscribers)
    else:
        stats = modelhaul.copy(f"s3://{BUCKET}/{a}", b, progress=subscribers)
    out: dict[str, Any] = {"seconds": stats.seconds, "stats": stats.summary()}
    if meter is not None:
        out["wire"] = {"counted": meter.counted, "sent": meter.sent, "received": meter.received}
    return out


def _boto3_client(endpoint: str, pool: int, credentials: tuple[str, str] | None = None) -> Any:
    import boto3
    from botocore.config import Config

    key_id, secret = credentials or (None, None)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=pool),
    )


def _child_boto3(direction: str, variant: str, endpoint: str, a: str, b: str) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    if variant == "default":
        client = _boto3_client(endpoint, 10)  # botocore's default pool
        config = TransferConfig()
    else:
        client = _boto3_client(endpoint, TUNED_CONCURRENCY + 4)
        config = TransferConfig(
            multipart_threshold=TUNED_CHUNK,
            multipart_chunksize=TUNED_CHUNK,
            max_concurrency=TUNED_CONCURRENCY,
        )
    started = time.perf_counter()
    if direction == "up":
        client.upload_file(a, BUCKET, b, Config=config)
    else:
        client.download_file(BUCKET, a, b, Config=config)
    return {"seconds": time.perf_counter() - started}


def _child_ceiling(endpoint: str, key: str) -> dict[str, Any]:
    import http.client
    import queue

    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=CEILING_THREADS + 4,
            response_checksum_validation="when_required",
        ),
    )
    started = time.perf_counter()
    size = int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
    ranges: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for start in range(0, size, CEILING_RANGE):
        ranges.put((start, min(size, start + CEILING_RANGE)))
    got = [0] * CEILING_THREADS
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        view = memoryview(bytearray(CEILING_BUFFER))
        try:
            while True:
                try:
                    start, end = ranges.get_nowait()
                except queue.Empty:
                    return
                r = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{end - 1}")
                body = r["Body"]
                raw = body._raw_stream
                fp = getattr(raw, "_fp", None)
                if isinstance(fp, http.client.HTTPResponse):
                    while n := fp.readinto(view):
                        got[i] += n
                    raw.release_conn()
                else:  # another HTTP stack: plain reads
                    while chunk := body.read(CEILING_BUFFER):
                        got[i] += len(chunk)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CEILING_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if sum(got) != size:
        raise RuntimeError(f"ceiling read {sum(got)} of {size} bytes")
    return {"seconds": time.perf_counter() - started, "bytes": sum(got)}


def child_main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "modelhaul":
        direction, a, b = argv[1:4]
        progress = argv[4] if len(argv) > 4 else None
        out = _child_modelhaul(direction, a, b, progress)
    elif kind == "boto3":
        direction, variant, endpoint, a, b = argv[1:6]
        out = _child_boto3(direction, variant, endpoint, a, b)
    elif kind == "ceiling":
        out = _child_ceiling(argv[1], argv[2])
    else:
        raise SystemExit(f"unknown child {kind!r}")
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------
# The parent.
# ------------------------------------------------------------------------------------------


def precompile() -> None:
    """Byte-compile modelhaul's sources, as installing a wheel does.

    An editable install has no .pyc files, and with PYTHONDONTWRITEBYTECODE set (as on
    this machine) every child would compile ~50 modules from source at start-up
    (~0.1 s) — a cost no user of an installed package pays.
    """
    import compileall

    import modelhaul

    compileall.compile_dir(str(Path(modelhaul.__file__).parent), quiet=1)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    best, fstype = "", "?"
    path = path.resolve()
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mnt = fields[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(
                mnt
            ) >= len(best):
                best, fstype = mnt, fields[2]
    return fstype


def make_workdir(base: str | None) -> Path:
    """A temp dir on a real disk (not tmpfs, whose writes cost no I/O)."""
    if base is None:
        base = tempfile.gettempdir()
        if _fs_type(Path(base)) in ("tmpfs", "ramfs"):
            base = str(Path.home() / ".cache")
    Path(base).mkdir(parents=True, exist_ok=True)
    if _fs_type(Path(base)) in ("tmpfs", "ramfs"):
        log(f"warning: {base} is in memory; disk writes will look faster than they are")
    return Path(tempfile.mkdtemp(prefix="modelhaul-bench-", dir=base))


def make_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes; return their sha256."""
    digest = hashlib.sha256()
    block = 16 * MiB
    with path.open("wb") as fh:
        left = size
        while left:
            data = os.urandom(min(block, left))
            fh.write(data)
            digest.update(data)
            left -= len(data)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class Run:
    """One finished child process."""

    def __init__(self, wall: float, rss_mib: float, rc: int, out: str, err: str) -> None:
        self.wall = wall
        self.rss_mib = rss_mib
        self.rc = rc
        self.out = out
        self.err = err

    def json(self) -> dict[str, Any]:
        for line in reversed(self.out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    return json.loads(line)
        return {}


SETTLE_S = 2.0


def run_child(cmd: list[str], env: dict[str, str], logdir: Path) -> Run:
    """Run ``cmd`` to the end under ``/usr/bin/time``; time it from spawn to exit.

    The peak RSS comes from GNU time (its ``wait4``), not from our own ``wait4``: Linux
    carries a process's high-water RSS across ``exec``, so a child forked from this
    (large) parent would report at least the parent's RSS.
    """
    out_path, err_path, rss_path = logdir / "child.out", logdir / "child.err", logdir / "rss"
    rss_path.unlink(missing_ok=True)
    os.sync()
    # Let the disk settle: the root filesystem is mounted with `discard`, so deleting the
    # previous 2 GiB output trims in the background and slows whichever tool runs next.
    time.sleep(SETTLE_S)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        # A session of its own, so an interrupted benchmark can stop time and its child.
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", str(rss_path), *cmd],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.perf_counter() - started
    rss = -1.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        rss = int(rss_path.read_text().split()[-1]) / 1024  # KiB
    return Run(
        wall,
        rss,
        proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = args.size_mib * MiB
        self.work = make_workdir(args.tmpdir)
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.key_id = "bench" + secrets.token_hex(6)
        self.secret = secrets.token_urlsafe(24)
        self.server: Any = None
        self.src = self.work / "src.bin"
        self.src_sha = ""
        self.runs: list[dict[str, Any]] = []
        self.resume: dict[str, Any] = {}
        self.problems: list[str] = []
        self.small_runs: list[dict[str, Any]] = []
        self.small_leftovers: list[Path] = []
        self.copy_runs: list[dict[str, Any]] = []

    # -- set-up --------------------------------------------------------------------------

    def start(self) -> None:
        import modelhaul

        precompile()

        self.server = modelhaul.start_server(
            self.work / "server",
            access_key_id=self.key_id,
            secret_access_key=self.secret,
            buckets=[BUCKET],
        )
        self.endpoint = self.server.endpoint_url
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODELHAUL_"))}
        nowhere = str(self.work / "no-such-file")
        base.update(
            AWS_ACCESS_KEY_ID=self.key_id,
            AWS_SECRET_ACCESS_KEY=self.secret,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=nowhere,
            AWS_SHARED_CREDENTIALS_FILE=nowhere,
            AWS_EC2_METADATA_DISABLED="true",
        )
        self.env = base
        self.mh_env = dict(
            base,
            AWS_ENDPOINT_URL=self.endpoint,
            MODELHAUL_PROVIDER="seaweedfs",
            MODELHAUL_STATE_DIR=str(self.work / "state"),
            MODELHAUL_CONFIG=nowhere,
        )
        self.client = _boto3_client(self.endpoint, 10, (self.key_id, self.secret))
        log(f"SeaweedFS at {self.endpoint}; work dir {self.work}")

    def stop(self) -> None:
        import modelhaul

        with contextlib.suppress(Exception):
            modelhaul.stop_server(self.work / "server")
        shutil.rmtree(self.work, ignore_errors=True)

    # -- commands ------------------------------------------------------------------------

    def command(self, tool: str, direction: str, key: str, path: Path) -> tuple[list[str], dict]:
        me = [PY, str(HERE), "_child"]
        if tool == "modelhaul":
            # The real command line, as a user runs it (start-up included, like s5cmd's).
            s3 = f"s3://{BUCKET}/{key}"
            a, b = (str(path), s3) if direction == "up" else (s3, str(path))
            return [PY, "-m", "modelhaul", "cp", "--json", a, b], self.mh_env
        if tool == "s5cmd":
            s3 = f"s3://{BUCKET}/{key}"
            a, b = (str(path), s3) if direction == "up" else (s3, str(path))
            return [str(BIN / "s5cmd"), "--endpoint-url", self.endpoint, "cp", a, b], self.env
        if tool.startswith("boto3-"):
            variant = tool.removeprefix("boto3-")
            a, b = (str(path), key) if direction == "up" else (key, str(path))
            return [*me, "boto3", direction, variant, self.endpoint, a, b], self.env
        if tool == "ceiling":
            return [*me, "ceiling", self.endpoint, key], self.env
        raise ValueError(tool)

    def _object_size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        except Exception:
            return None

    def object_sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"]
        for chunk in body.iter_chunks(8 * MiB):
            digest.update(chunk)
        return digest.hexdigest()

    # -- timed runs ----------------------------------------------------------------------

    def timed(self, rep: int, tool: str, direction: str) -> None:
        if direction == "up":
            key, path = f"up/{tool}", self.src
        else:
            key, path = "ref", self.work / f"down-{tool}.bin"
            for p in (path, path.with_name(path.name + ".modelhaul-partial")):
                p.unlink(missing_ok=True)
        cmd, env = self.command(tool, direction, key, path)
        run = run_child(cmd, env, self.logs)
        row: dict[str, Any] = {
            "rep": rep,
            "tool": tool,
            "direction": direction,
            "wall_s": round(run.wall, 4),
            "mb_per_s": round(self.size / run.wall / 1e6, 1),
            "peak_rss_mib": round(run.rss_mib, 1),
            "rc": run.rc,
        }
        data = run.json()
        if "seconds" in data and data["seconds"] > 0:
            row["inproc_s"] = round(data["seconds"], 4)
            row["inproc_mb_per_s"] = round(self.size / data["seconds"] / 1e6, 1)
        if "stats" in data:
            row["stats"] = data["stats"]
        ok = run.rc == 0
        if ok and direction == "up":
            got = self._object_size(key)
            ok = got == self.size
            if not ok:
                row["error"] = f"object is {got} bytes, not {self.size}"
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=BUCKET, Key=key)
        elif ok and tool != "ceiling":
            if not path.is_file() or path.stat().st_size != self.size:
                ok = False
                row["error"] = "downloaded file missing or the wrong size"
            elif self.args.verify and sha256_file(path) != self.src_sha:
                ok = False
                row["error"] = "downloaded file differs from the source"
            path.unlink(missing_ok=True)
        if run.rc != 0:
            row["error"] = f"exit {run.rc}: {run.err.strip()[-800:]}"
        row["ok"] = ok
        if not ok:
            self.problems.append(f"{tool} {direction} rep {rep}: {row.get('error')}")
        self.runs.append(row)
        extra = f" (in-process {row['inproc_mb_per_s']:.0f})" if "inproc_mb_per_s" in row else ""
        status = "" if ok else f"  FAILED: {row.get('error')}"
        log(
            f"  rep {rep} {direction:4} {tool:14} {run.wall:7.2f} s {row['mb_per_s']:8.1f} MB/s"
            f"{extra}  rss {run.rss_mib:6.1f} MiB{status}"
        )

    # -- kill and resume -----------------------------------------------------------------

    def kill_and_resume(self, direction: str) -> dict[str, Any]:
        """Kill a modelhaul transfer once it has moved half the file, run it again to the
        end, and count what both runs moved."""
        sides = [self.work / f"meter-{direction}-{i}" for i in (1, 2)]
        for side in sides:
            side.unlink(missing_ok=True)
        if direction == "up":
            key, path = "resume/up", self.src
            args = [str(path), key]
        else:
            key, path = "ref", self.work / "resume-down.bin"
            args = [key, str(path)]
        base = [PY, str(HERE), "_child", "modelhaul", direction, *args]
        os.sync()
        err = (self.logs / f"kill-{direction}.err").open("wb")
        proc = subprocess.Popen(
            [*base, str(sides[0])],
            env=self.mh_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        fd = -1
        moved = (0, 0, 0)
        try:
            while proc.poll() is None:
                if fd < 0:
                    with contextlib.suppress(FileNotFoundError):
                        fd = os.open(sides[0], os.O_RDONLY)
                if fd >= 0:
                    moved = read_meter(fd)
                if moved[0] >= self.size // 2:
                    break
                time.sleep(0.002)
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the {direction} child ended (exit {proc.returncode}) before 50%: "
                    "use a bigger --size-mib"
                )
            # Freeze it so the figures stop moving, read them, then kill it.
            os.kill(proc.pid, signal.SIGSTOP)
            moved = read_meter(fd)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()
            if fd >= 0:
                os.close(fd)
        counted1, sent1, received1 = moved
        log(f"  killed {direction} at {counted1 / MiB:.0f} MiB of {self.size / MiB:.0f} MiB")
        run = run_child([*base, str(sides[1])], self.mh_env, self.logs)
        data = run.json()
        stats = data.get("stats", {})
        wire = data.get("wire", {})
        out: dict[str, Any] = {
            "direction": direction,
            "killed_at_bytes": counted1,
            "second_run_bytes": stats.get("bytes"),
            "second_run_bytes_resumed": stats.get("bytes_resumed"),
            "second_run_wall_s": round(run.wall, 3),
            "rc": run.rc,
        }
        if run.rc != 0 or "bytes" not in stats:
            out["error"] = f"rerun exit {run.rc}: {run.err.strip()[-800:]}"
            self.problems.append(f"resume {direction}: {out['error']}")
            return out
        out["ratio"] = round((counted1 + stats["bytes"]) / self.size, 4)
        # What crossed the sockets (payload plus HTTP headers), the kill's lost parts in
        # flight included: sent for an upload, received for a download.
        if direction == "up" and "sent" in wire:
            out["wire_bytes"] = sent1 + wire["sent"]
        elif "received" in wire:
            out["wire_bytes"] = received1 + wire["received"]
        if "wire_bytes" in out:
            out["wire_ratio"] = round(out["wire_bytes"] / self.size, 4)
        if direction == "up":
            same = self.object_sha256(key) == self.src_sha
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=BUCKET, Key=key)
        else:
            same = path.is_file() and sha256_file(path) == self.src_sha
            path.unlink(missing_ok=True)
        out["identical"] = same
        if not same:
            self.problems.append(f"resume {direction}: the result differs from the source")
        log(
            f"  resumed {direction}: second run moved {stats['bytes'] / MiB:.0f} MiB, "
            f"kept {stats.get('bytes_resumed', 0) / MiB:.0f} MiB; ratio {out['ratio']:.3f}"
            + (f", wire ratio {out['wire_ratio']:.3f}" if "wire_ratio" in out else "")
            + f"; identical: {same}"
        )
        return out

    # -- many small files ----------------------------------------------------------------

    def small_tree(self, name: str, files: int, size: int, folders: int) -> Path:
        """``files`` random files of ``size`` bytes spread over ``folders`` folders."""
        root = self.work / f"tree-{name}"
        for i in range(files):
            folder = root / f"d{i % folders:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))
        return root

    def small_command(self, tool: str, direction: str, prefix: str, path: Path) -> list[str]:
        s3 = f"s3://{BUCKET}/{prefix}/"
        if tool == "modelhaul":
            a, b = (str(path), s3) if direction == "up" else (s3, str(path))
            # As a user runs it: the CLI, start-up included (like s5cmd's).
            return [PY, "-m", "modelhaul", "-q", "cp", "-r", a, b]
        if direction == "up":
            return [str(BIN / "s5cmd"), "--endpoint-url", self.endpoint, "cp", f"{path}/", s3]
        return [str(BIN / "s5cmd"), "--endpoint-url", self.endpoint, "cp", s3 + "*", f"{path}/"]

    def _tree_listing(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix + "/"
        ):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix) + 1 :]] = int(o["Size"])
        return out

    def _delete_prefix(self, prefix: str) -> None:
        keys = list(self._tree_listing(prefix))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=BUCKET,
                Delete={"Objects": [{"Key": f"{prefix}/{k}"} for k in keys[i : i + 1000]]},
            )

    def small_files(self) -> None:
        for case, files, size, folders in SMALL_CASES:
            if self.args.small_only and case not in self.args.small_only:
                continue
            log(f"small files: {case} ({files} x {size} B in {folders} folders)")
            tree = self.small_tree(case, files, size, folders)
            want = {
                str(p.relative_to(tree)): p.stat().st_size for p in tree.rglob("*") if p.is_file()
            }
            ref = f"small-ref/{case}"
            # The tree every download reads, uploaded once by modelhaul (full-object CRC32C).
            seed = run_child(
                self.small_command("modelhaul", "up", ref, tree), self.mh_env, self.logs
            )
            if seed.rc != 0:
                self.problems.append(f"small {case}: seeding failed: {seed.err[-800:]}")
                continue
            tools = ["modelhaul", "s5cmd"]
            for rep in range(self.args.repeat):
                for direction in ("up", "down"):
                    order = tools if rep % 2 == 0 else tools[::-1]
                    for tool in order:
                        self._small_timed(case, rep + 1, tool, direction, tree, ref, want)
            self._delete_prefix(ref)
            self.small_leftovers.append(tree)
            self.small_leftovers.extend(self.work.glob(f"small-down-{case}-*"))
        for path in self.small_leftovers:  # after every timed run (see _small_timed)
            shutil.rmtree(path, ignore_errors=True)

    def _small_timed(
        self,
        case: str,
        rep: int,
        tool: str,
        direction: str,
        tree: Path,
        ref: str,
        want: dict[str, int],
    ) -> None:
        if direction == "up":
            prefix, path = f"small-up/{case}/{tool}", tree
            self._delete_prefix(prefix)
        else:
            # A fresh folder per run, removed only after every case: ext4 scans the inode
            # table for inodes freed in the last ~30 s on each create (recently_deleted()),
            # so deleting 10,000 files just before a run made each create ~0.8 ms of system
            # time instead of ~0.05 (measured here), for whichever tool ran next.
            prefix, path = ref, self.work / f"small-down-{case}-{tool}-{rep}"
        env = self.mh_env if tool == "modelhaul" else self.env
        run = run_child(self.small_command(tool, direction, prefix, path), env, self.logs)
        total = sum(want.values())
        row: dict[str, Any] = {
            "case": case,
            "rep": rep,
            "tool": tool,
            "direction": direction,
            "wall_s": round(run.wall, 4),
            "files_per_s": round(len(want) / run.wall, 1),
            "mb_per_s": round(total / run.wall / 1e6, 2),
            "peak_rss_mib": round(run.rss_mib, 1),
            "rc": run.rc,
        }
        ok = run.rc == 0
        if ok and direction == "up":
            got = self._tree_listing(prefix)
            ok = got == want
            if not ok:
                row["error"] = f"{len(got)} objects listed, {len(want)} files expected"
            self._delete_prefix(prefix)
        elif ok:
            got = {
                str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()
            }
            ok = got == want
            if ok and self.args.verify:
                ok = all((path / k).read_bytes() == (tree / k).read_bytes() for k in want)
            if not ok:
                row["error"] = f"downloaded tree differs ({len(got)} files, {len(want)} expected)"
        if run.rc != 0:
            row["error"] = f"exit {run.rc}: {run.err.strip()[-800:]}"
        row["ok"] = ok
        if not ok:
            self.problems.append(f"small {case} {tool} {direction} rep {rep}: {row.get('error')}")
        self.small_runs.append(row)
        status = "" if ok else f"  FAILED: {row.get('error')}"
        log(
            f"  rep {rep} {case} {direction:4} {tool:10} {run.wall:7.2f} s "
            f"{row['files_per_s']:8.0f} files/s  rss {run.rss_mib:6.1f} MiB{status}"
        )

    def small_summary(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for case, *_ in SMALL_CASES:
            for direction in ("up", "down"):
                med: dict[str, float] = {}
                for tool in ("modelhaul", "s5cmd"):
                    runs = [
                        r
                        for r in self.small_runs
                        if (r["case"], r["tool"], r["direction"]) == (case, tool, direction)
                        and r["ok"]
                    ]
                    if not runs:
                        continue
                    walls = [r["wall_s"] for r in runs]
                    med[tool] = statistics.median(walls)
                    rows.append(
                        {
                            "case": case,
                            "direction": direction,
                            "tool": tool,
                            "runs": len(runs),
                            "median_s": round(med[tool], 3),
                            "min_s": min(walls),
                            "max_s": max(walls),
                            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                        }
                    )
                if len(med) == 2:
                    rows[-1]["modelhaul_vs_s5cmd"] = None
                    rows[-2]["modelhaul_vs_s5cmd"] = round(med["s5cmd"] / med["modelhaul"], 3)
        return rows

    # -- s3 -> s3 inside one store -------------------------------------------------------

    def copy_command(self, tool: str) -> tuple[list[str], dict[str, str]]:
        src, dst = f"s3://{BUCKET}/{COPY_SRC}", f"s3://{BUCKET}/{COPY_DST}"
        if tool == "modelhaul":
            # As a user runs it: the CLI, start-up included (like s5cmd's).
            return [PY, "-m", "modelhaul", "-q", "cp", src, dst], self.mh_env
        return [str(BIN / "s5cmd"), "--endpoint-url", self.endpoint, "cp", src, dst], self.env

    def copy_case(self) -> None:
        size = self.args.copy_size_mib * MiB
        log(f"s3 -> s3 copy: one {self.args.copy_size_mib} MiB object")
        local = self.work / "copy-src.bin"
        sha = make_random_file(local, size)
        # The source, uploaded once by modelhaul (full-object CRC32C, which its copy keeps).
        seed = run_child(
            [PY, "-m", "modelhaul", "-q", "cp", str(local), f"s3://{BUCKET}/{COPY_SRC}"],
            self.mh_env,
            self.logs,
        )
        local.unlink(missing_ok=True)
        if seed.rc != 0:
            self.problems.append(f"copy: seeding failed: {seed.err[-800:]}")
            return
        tools = ["modelhaul", "s5cmd"]
        for rep in range(self.args.repeat):
            for tool in tools if rep % 2 == 0 else tools[::-1]:
                self._copy_timed(rep + 1, tool, size, sha)
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=BUCKET, Key=COPY_SRC)

    def _copy_timed(self, rep: int, tool: str, size: int, sha: str) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=BUCKET, Key=COPY_DST)
        cmd, env = self.copy_command(tool)
        run = run_child(cmd, env, self.logs)
        row: dict[str, Any] = {
            "rep": rep,
            "tool": tool,
            "wall_s": round(run.wall, 4),
            "mb_per_s": round(size / run.wall / 1e6, 1),
            "peak_rss_mib": round(run.rss_mib, 1),
            "rc": run.rc,
        }
        ok = run.rc == 0
        if ok:
            got = self._object_size(COPY_DST)
            ok = got == size
            if not ok:
                row["error"] = f"the copy is {got} bytes, not {size}"
            elif self.args.verify and self.object_sha256(COPY_DST) != sha:
                ok = False
                row["error"] = "the copy differs from the source"
        else:
            row["error"] = f"exit {run.rc}: {run.err.strip()[-800:]}"
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=BUCKET, Key=COPY_DST)
        row["ok"] = ok
        if not ok:
            self.problems.append(f"copy {tool} rep {rep}: {row.get('error')}")
        self.copy_runs.append(row)
        status = "" if ok else f"  FAILED: {row.get('error')}"
        log(
            f"  rep {rep} copy {tool:10} {run.wall:7.2f} s {row['mb_per_s']:8.1f} MB/s"
            f"  rss {run.rss_mib:6.1f} MiB{status}"
        )

    def copy_summary(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        med: dict[str, float] = {}
        for tool in ("modelhaul", "s5cmd"):
            runs = [r for r in self.copy_runs if r["tool"] == tool and r["ok"]]
            if not runs:
                continue
            walls = [r["wall_s"] for r in runs]
            med[tool] = statistics.median(walls)
            rows.append(
                {
                    "case": f"{self.args.copy_size_mib}MiB s3->s3",
                    "tool": tool,
                    "runs": len(runs),
                    "median_s": round(med[tool], 3),
                    "min_s": min(walls),
                    "max_s": max(walls),
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                }
            )
        if len(med) == 2:
            rows[0]["modelhaul_vs_s5cmd"] = round(med["s5cmd"] / med["modelhaul"], 3)
        return rows

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> None:
        log(f"writing {self.args.size_mib} MiB of random data")
        self.src_sha = make_random_file(self.src, self.size)
        # The object every download reads: uploaded once, by modelhaul (full-object CRC32C,
        # which modelhaul's download verifies).
        cmd, env = self.command("modelhaul", "up", "ref", self.src)
        ref = run_child(cmd, env, self.logs)
        if ref.rc != 0:
            raise RuntimeError(f"uploading the reference object failed: {ref.err[-2000:]}")
        for rep in range(self.args.repeat):
            log(f"repetition {rep + 1}/{self.args.repeat}")
            for direction, tools in (("up", UP_TOOLS), ("down", DOWN_TOOLS)):
                shift = rep % len(tools)
                for tool in tools[shift:] + tools[:shift]:
                    self.timed(rep + 1, tool, direction)
        if not self.args.no_resume:
            log("kill and resume")
            for direction in ("down", "up"):
                try:
                    self.resume[direction] = self.kill_and_resume(direction)
                except Exception as exc:
                    self.resume[direction] = {"error": str(exc)}
                    self.problems.append(f"resume {direction}: {exc}")

    # -- report --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        from modelhaul._core import config as _config

        rows = []
        med: dict[tuple[str, str], float] = {}
        for direction, tools in (("up", UP_TOOLS), ("down", DOWN_TOOLS)):
            for tool in tools:
                runs = [
                    r
                    for r in self.runs
                    if r["tool"] == tool and r["direction"] == direction and r["ok"]
                ]
                if not runs:
                    rows.append({"tool": tool, "direction": direction, "runs": 0})
                    continue
                speeds = [r["mb_per_s"] for r in runs]
                inproc = [r["inproc_mb_per_s"] for r in runs if "inproc_mb_per_s" in r]
                med[tool, direction] = statistics.median(speeds)
                rows.append(
                    {
                        "tool": tool,
                        "direction": direction,
                        "runs": len(runs),
                        "median_mb_per_s": round(statistics.median(speeds), 1),
                        "min_mb_per_s": min(speeds),
                        "max_mb_per_s": max(speeds),
                        "inproc_median_mb_per_s": round(statistics.median(inproc), 1)
                        if inproc
                        else None,
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    }
                )

        def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
            return round(med[a] / med[b], 3) if a in med and b in med else None

        ratios = {
            "download modelhaul/s5cmd": ratio(("modelhaul", "down"), ("s5cmd", "down")),
            "download modelhaul/boto3-default": ratio(
                ("modelhaul", "down"), ("boto3-default", "down")
            ),
            "download modelhaul/boto3-tuned": ratio(("modelhaul", "down"), ("boto3-tuned", "down")),
            "download modelhaul/ceiling": ratio(("modelhaul", "down"), ("ceiling", "down")),
            "upload modelhaul/s5cmd": ratio(("modelhaul", "up"), ("s5cmd", "up")),
            "upload modelhaul/boto3-default": ratio(("modelhaul", "up"), ("boto3-default", "up")),
            "upload modelhaul/boto3-tuned": ratio(("modelhaul", "up"), ("boto3-tuned", "up")),
        }
        cfg = _config.TransferConfig()
        conc = cfg.concurrency or getattr(_config, "DEFAULT_CONCURRENCY", 8)
        upload_part_size = _config.upload_part_size
        rss_limit = {
            "up": RSS_BASE_MIB + conc * upload_part_size(self.size, cfg) / MiB,
            "down": RSS_BASE_MIB + conc * cfg.chunk_size / MiB,
        }
        rss = {
            d: max(
                (
                    r["peak_rss_mib"]
                    for r in self.runs
                    if r["tool"] == "modelhaul" and r["direction"] == d and r["ok"]
                ),
                default=None,
            )
            for d in ("up", "down")
        }

        def check(name: str, value: float | None, limit: float, at_least: bool) -> dict:
            if value is None:
                verdict = "n/a"
            else:
                verdict = "PASS" if (value >= limit if at_least else value <= limit) else "FAIL"
            return {
                "target": name,
                "value": value,
                "limit": limit,
                "op": ">=" if at_least else "<=",
                "verdict": verdict,
            }

        checks = [
            check(
                "download modelhaul/s5cmd",
                ratios["download modelhaul/s5cmd"],
                TARGET_DOWN_VS_S5CMD,
                True,
            ),
            check(
                "download modelhaul/boto3-default",
                ratios["download modelhaul/boto3-default"],
                TARGET_DOWN_VS_BOTO3,
                True,
            ),
            check(
                "upload modelhaul/s5cmd", ratios["upload modelhaul/s5cmd"], TARGET_UP_VS_S5CMD, True
            ),
            check("modelhaul download peak RSS MiB", rss["down"], rss_limit["down"], False),
            check("modelhaul upload peak RSS MiB", rss["up"], rss_limit["up"], False),
        ]
        for d, name in (("down", "download"), ("up", "upload")):
            res = self.resume.get(d, {})
            checks.append(
                check(f"{name} resume bytes/size", res.get("ratio"), TARGET_RESUME, False)
            )
            if "wire_ratio" in res:
                checks.append(
                    check(
                        f"{name} resume wire bytes/size (info)",
                        res["wire_ratio"],
                        TARGET_RESUME,
                        False,
                    )
                )
            if res and res.get("identical") is False:
                checks.append(
                    {
                        "target": f"{name} resume result identical",
                        "value": False,
                        "limit": True,
                        "op": "==",
                        "verdict": "FAIL",
                    }
                )
        return {
            "rows": rows,
            "ratios": ratios,
            "checks": checks,
            "resume": self.resume,
            "runs": self.runs,
            "problems": self.problems,
            "modelhaul_defaults": {
                "concurrency": conc,
                "upload_part_mib": upload_part_size(self.size, cfg) / MiB,
                "download_chunk_mib": cfg.chunk_size / MiB,
            },
        }


def format_report(summary: dict[str, Any], size_mib: int, repeat: int) -> str:
    lines = [
        f"Object: {size_mib} MiB random; {repeat} repetition(s); MB/s = 10^6 bytes/s of wall "
        "time around the child process (start-up included); in-proc = the tool's own timing.",
        "",
        "| tool | direction | median MB/s | min | max | in-proc median MB/s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        if not r["runs"]:
            lines.append(f"| {r['tool']} | {r['direction']} | ERROR | | | | |")
            continue
        inproc = r["inproc_median_mb_per_s"]
        lines.append(
            f"| {r['tool']} | {r['direction']} | {r['median_mb_per_s']:.0f} | "
            f"{r['min_mb_per_s']:.0f} | {r['max_mb_per_s']:.0f} | "
            f"{'' if inproc is None else f'{inproc:.0f}'} | {r['peak_rss_mib']:.0f} |"
        )
    lines += ["", "Ratios (medians of wall-time MB/s):"]
    for name, value in summary["ratios"].items():
        lines.append(f"  {name:36} {'n/a' if value is None else f'{value:.2f}x'}")
    lines += ["", "Kill at ~50% and resume (bytes moved by both runs / size):"]
    for d in ("down", "up"):
        res = summary["resume"].get(d)
        if not res:
            continue
        if "ratio" not in res:
            lines.append(f"  {d:4}  ERROR: {res.get('error')}")
            continue
        wire = f", on the wire {res['wire_ratio']:.3f}" if "wire_ratio" in res else ""
        kept = res["second_run_bytes_resumed"] / MiB
        lines.append(
            f"  {d:4}  killed at {res['killed_at_bytes'] / MiB:.0f} MiB, rerun moved "
            f"{res['second_run_bytes'] / MiB:.0f} MiB (kept {kept:.0f} MiB): "
            f"ratio {res['ratio']:.3f}{wire}; identical: {res['identical']}"
        )
    lines += ["", "Targets:"]
    for c in summary["checks"]:
        v = c["value"]
        shown = "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        lim = c["limit"]
        lim_s = f"{lim:.3g}" if isinstance(lim, float) else str(lim)
        lines.append(f"  {c['verdict']:4}  {c['target']:40} {shown:>8} {c['op']} {lim_s}")
    if summary["problems"]:
        lines += ["", "Problems:"] + [f"  - {p}" for p in summary["problems"]]
    return "\n".join(lines)


def small_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.get("modelhaul_vs_s5cmd") is None:
            continue
        value = r["modelhaul_vs_s5cmd"]
        out.append(
            {
                "target": f"{r['case']} {r['direction']}: s5cmd time / modelhaul time",
                "value": value,
                "limit": TARGET_SMALL_VS_S5CMD,
                "op": ">=",
                "verdict": "PASS" if value >= TARGET_SMALL_VS_S5CMD else "FAIL",
            }
        )
    return out


def format_small(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    lines = [
        "",
        "Many small files (`cp -r` of a tree; wall time of the child, start-up included):",
        f"{'case':12} {'dir':5} {'tool':10} {'runs':>4} {'median s':>9} {'min':>7} {'max':>7}"
        f" {'rss MiB':>8} {'x s5cmd':>8}",
    ]
    for r in rows:
        ratio = r.get("modelhaul_vs_s5cmd")
        lines.append(
            f"{r['case']:12} {r['direction']:5} {r['tool']:10} {r['runs']:>4} {r['median_s']:>9.3f}"
            f" {r['min_s']:>7.3f} {r['max_s']:>7.3f} {r['peak_rss_mib']:>8.1f}"
            f" {'' if ratio is None else f'{ratio:.2f}':>8}"
        )
    for c in checks:
        if str(c["target"]).startswith(tuple(r["case"] for r in rows)):
            lines.append(
                f"  {c['target']}: {c['value']:.2f} (target {c['op']} {c['limit']}) {c['verdict']}"
            )
    return "\n".join(lines)


def copy_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "target": f"{r['case']} copy: s5cmd time / modelhaul time",
            "value": r["modelhaul_vs_s5cmd"],
            "limit": TARGET_COPY_VS_S5CMD,
            "op": ">=",
            "verdict": "PASS" if r["modelhaul_vs_s5cmd"] >= TARGET_COPY_VS_S5CMD else "FAIL",
        }
        for r in rows
        if r.get("modelhaul_vs_s5cmd") is not None
    ]


def format_copy(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    lines = [
        "",
        "s3 -> s3 inside one store (one object; wall time of the child, start-up included):",
        f"{'case':16} {'tool':10} {'runs':>4} {'median s':>9} {'min':>7} {'max':>7}"
        f" {'rss MiB':>8} {'x s5cmd':>8}",
    ]
    for r in rows:
        ratio = r.get("modelhaul_vs_s5cmd")
        lines.append(
            f"{r['case']:16} {r['tool']:10} {r['runs']:>4} {r['median_s']:>9.3f}"
            f" {r['min_s']:>7.3f} {r['max_s']:>7.3f} {r['peak_rss_mib']:>8.1f}"
            f" {'' if ratio is None else f'{ratio:.2f}':>8}"
        )
    for c in checks:
        lines.append(
            f"  {c['target']}: {c['value']:.2f} (target {c['op']} {c['limit']}) {c['verdict']}"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(Exception):
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    versions: dict[str, str] = {}
    with contextlib.suppress(Exception):
        import boto3
        import botocore

        versions["boto3"] = boto3.__version__
        versions["botocore"] = botocore.__version__
    with contextlib.suppress(Exception):
        import modelhaul

        versions["modelhaul"] = modelhaul.__version__
    with contextlib.suppress(Exception):
        versions["s5cmd"] = subprocess.run(
            [str(BIN / "s5cmd"), "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    with contextlib.suppress(Exception):
        versions["weed"] = (
            subprocess.run(
                [str(BIN / "weed"), "version"], capture_output=True, text=True, check=False
            )
            .stdout.strip()
            .splitlines()[0]
        )
    info["versions"] = versions
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="file size (default 2048)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--json-out",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also write the results as JSON (default path: bench/results/transfer-<date>.json)",
    )
    parser.add_argument(
        "--tmpdir",
        default=None,
        help="where the temp work dir goes (default: the system temp dir, unless it is tmpfs)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the sha256 check of every download",
    )
    parser.add_argument("--no-resume", action="store_true", help="skip the kill-and-resume test")
    parser.add_argument(
        "--only",
        choices=["large", "small", "copy"],
        default=None,
        help="run only the large-file cases, the many-small-files cases or the s3 -> s3 copy",
    )
    parser.add_argument(
        "--copy-size-mib",
        type=int,
        default=COPY_SIZE_MIB,
        help=f"object size of the s3 -> s3 copy (default {COPY_SIZE_MIB})",
    )
    parser.add_argument(
        "--small-case",
        dest="small_only",
        action="append",
        default=[],
        choices=[c[0] for c in SMALL_CASES],
        help="small-file case to run (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 64:
        parser.error("--size-mib must be at least 64 (multipart needs a few parts)")

    # A plain SIGTERM (timeout, kill) still stops the server and removes the work dir.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    bench = Bench(args)
    run_large = args.only in (None, "large")
    try:
        bench.start()
        if run_large:
            bench.run()
        if args.only in (None, "small"):
            bench.small_files()
        if args.only in (None, "copy"):
            bench.copy_case()
    finally:
        bench.stop()
    summary = bench.summary() if run_large else {"checks": []}
    small = bench.small_summary()
    summary["small_files"] = small
    summary["checks"].extend(small_checks(small))
    copy = bench.copy_summary()
    copied = copy_checks(copy)
    summary["copy"] = {"size_mib": args.copy_size_mib, "rows": copy, "runs": bench.copy_runs}
    summary["checks"].extend(copied)
    if run_large:
        print(format_report(summary, args.size_mib, args.repeat))
    if small:
        print(format_small(small, summary["checks"]))
    if copy:
        print(format_copy(copy, copied))
    if bench.problems:
        print("problems:\n  " + "\n  ".join(bench.problems))
    if args.json_out is not None:
        path = (
            Path(args.json_out)
            if args.json_out
            else (HERE.parent / "results" / f"transfer-{started:%Y-%m-%dT%H%M%SZ}.json")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmark": "transfer",
            "started_utc": started.isoformat(timespec="seconds"),
            "command": [Path(sys.executable).name, *sys.argv],
            "size_mib": args.size_mib,
            "repeat": args.repeat,
            "machine": machine,
            **summary,
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {path}")
    if bench.problems:
        return 2
    return 1 if any(c["verdict"] == "FAIL" for c in summary["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
