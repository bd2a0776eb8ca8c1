"""A weak link: the client and SeaweedFS in two network namespaces of their own, joined
by a veth pair, with real kernel packet loss (an nftables ``numgen random`` drop rule in
each namespace) and a rate limit (``tc`` ``tbf`` on each end). Uploads and downloads
complete byte-identical every time; the times are recorded beside a clean link's.

Everything stays inside the two namespaces this test creates (10.x addresses exist only
there) and is removed in ``finally``. Needs root, iproute2 and nftables; skips, saying
why, where any of them is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from tests.conftest import ACCESS_KEY, SECRET_KEY, make_file
from tests.reliability import MiB, record, sha256

RATE = "20mbit"
LOSS_PERCENT = 1

STARTER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import modelhaul
    srv = modelhaul.start_server(Path(sys.argv[1]), host=sys.argv[2], access_key_id=sys.argv[3],
                                 secret_access_key=sys.argv[4], buckets=["weak"], timeout=120)
    print(json.dumps(srv.env()))
    """
)


def _sh(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _ok(*args: str, ns: str | None = None) -> None:
    done = _sh(*args, ns=ns)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


class Link:
    """Two namespaces, a veth pair between them, SeaweedFS in one."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 100000}"
        self.server_ns, self.client_ns = f"mhs{tag}", f"mhc{tag}"
        octet = os.getpid() % 200 + 20
        self.server_ip, self.client_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
        self.data = tmp / "weak-seaweedfs"
        self.env: dict[str, str] = {}

    def up(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            _ok("ip", "netns", "add", ns)
            _ok("ip", "link", "set", "lo", "up", ns=ns)
        _ok("ip", "link", "add", "mhv-s", "netns", self.server_ns, "type", "veth", "peer", "name",
            "mhv-c", "netns", self.client_ns)  # fmt: skip
        for ns, dev, ip in ((self.server_ns, "mhv-s", self.server_ip),
                            (self.client_ns, "mhv-c", self.client_ip)):  # fmt: skip
            _ok("ip", "addr", "add", f"{ip}/30", "dev", dev, ns=ns)
            _ok("ip", "link", "set", dev, "up", ns=ns)
        done = _sh(sys.executable, "-c", STARTER, str(self.data), self.server_ip, ACCESS_KEY,
                   SECRET_KEY, ns=self.server_ns)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"SeaweedFS in {self.server_ns}: {done.stderr[-2000:]}")
        self.env = json.loads(done.stdout.strip().splitlines()[-1])

    def degrade(self) -> None:
        """Rate limit each direction; drop LOSS_PERCENT of the packets each side receives."""
        for ns, dev in ((self.server_ns, "mhv-s"), (self.client_ns, "mhv-c")):
            _ok("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", RATE, "burst", "32kbit",
                "latency", "400ms", ns=ns)  # fmt: skip
            rules = textwrap.dedent(
                f"""
                table inet mhloss {{
                    chain input {{
                        type filter hook input priority 0; policy accept;
                        numgen random mod 100 < {LOSS_PERCENT} drop
                    }}
                }}
                """
            )
            done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules,
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"nft: {done.stderr.strip()}")

    def heal(self) -> None:
        for ns, dev in ((self.server_ns, "mhv-s"), (self.client_ns, "mhv-c")):
            _sh("tc", "qdisc", "del", "dev", dev, "root", ns=ns)
            _sh("nft", "delete", "table", "inet", "mhloss", ns=ns)

    def down(self) -> None:
        try:
            if self.data.exists():
                modelhaul.stop_server(self.data)
        finally:
            for ns in (self.server_ns, self.client_ns):
                _sh("ip", "netns", "del", ns)

    def cli(self, *args: str, base_env: dict[str, str]) -> float:
        """Run ``modelhaul ARGS`` in the client namespace; return the seconds it took."""
        env = {k: v for k, v in base_env.items() if not k.startswith("AWS_")}
        env.update(self.env)
        start = time.monotonic()
        done = subprocess.run(["ip", "netns", "exec", self.client_ns, sys.executable, "-m",
                               "modelhaul", "-q", *args], env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr[-3000:]
        return took


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2, nftables)"
    probe = f"mhprobe{os.getpid()}"
    done = _sh("ip", "netns", "add", probe)
    if done.returncode != 0:
        return f"network namespaces are not allowed here: {done.stderr.strip()}"
    _sh("ip", "netns", "del", probe)
    return None


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    lnk = Link(tmp_path)
    try:
        lnk.up()
        yield lnk
    finally:
        lnk.down()


def _both_ways(link: Link, env: dict[str, str], tmp: Path, size: int, rounds: int) -> None:
    src = make_file(tmp / "weak.bin", size, seed=9)
    want = sha256(src)
    for name in ("clean", *(["weak"] * rounds)):
        if name == "weak":
            link.degrade()
        key = f"s3://weak/{name}-{time.monotonic_ns()}.bin"
        up = link.cli("cp", str(src), key, base_env=env)
        out = tmp / f"{name}.out"
        down = link.cli("cp", key, str(out), base_env=env)
        assert sha256(out) == want, f"{name} link: the download differs"
        out.unlink()
        for direction, secs in (("up", up), ("down", down)):
            record("weak_link", link=name, direction=direction, seconds=secs, bytes=size,
                   rate=RATE if name == "weak" else None, loss=LOSS_PERCENT)  # fmt: skip
            print(f"{name} {direction}: {size / MiB:.0f} MiB in {secs:.1f} s "
                  f"({size * 8 / secs / 1e6:.1f} Mbit/s)")  # fmt: skip
        if name == "weak":
            link.heal()


def test_weak_link_small(link: Link, env: dict[str, str], tmp_path: Path) -> None:
    """16 MiB each way over 20 Mbit/s with 1% loss (the soak moves 256 MiB)."""
    _both_ways(link, env, tmp_path, 16 * MiB, rounds=1)


@pytest.mark.soak
def test_weak_link_256mib(link: Link, env: dict[str, str], tmp_path: Path) -> None:
    _both_ways(link, env, tmp_path, 256 * MiB, rounds=1)
