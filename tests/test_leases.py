"""Leases on the real SeaweedFS: a stalled heartbeat delays no other lease, a lease that
could not be renewed in time is known to be lost, and a forked child starts afresh."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from modelhaul import EmbeddedServer, S3Store, load_profile
from modelhaul._store.lease import Lease, ObjectLeaseBackend
from tests.faultproxy import Fault, FaultProxy

# Beats every 1 s, each request given up after 1 s: short, yet long enough that a loaded
# machine (several test runs on two cores) still answers a healthy beat in time.
TTL = 4.0
# Far longer than the TTL, and than the store's own 30 s read timeout's share of it.
STALL_SECONDS = 60.0


def _lease(store: S3Store, bucket: str, key: str) -> Lease:
    return Lease(ObjectLeaseBackend(store, bucket, key, f"the test lease {key}"), ttl=TTL)


def _record(store: S3Store, bucket: str, key: str) -> dict[str, object]:
    data = json.loads(store.get_bytes(bucket, key))
    assert isinstance(data, dict)
    return data


def _wait_for_stall(proxy: FaultProxy, target: str) -> None:
    deadline = time.monotonic() + 5
    while not any(f == "stall" and target in t for _, t, f in proxy.log):
        assert time.monotonic() < deadline, proxy.log
        time.sleep(0.02)


def test_a_stalled_heartbeat_delays_no_other_lease(
    server: EmbeddedServer, env: dict[str, str], bucket: str
) -> None:
    store = S3Store(load_profile())
    with FaultProxy(server.host, server.port, stall_seconds=STALL_SECONDS) as proxy:
        stalled = _lease(S3Store(load_profile(endpoint_url=proxy.url)), bucket, "a/stalled.lease")
        healthy = _lease(store, bucket, "b/healthy.lease")
        assert stalled.try_acquire() and healthy.try_acquire()
        proxy.set_faults([Fault("stall", 1.0, target="stalled.lease")])
        _wait_for_stall(proxy, "stalled.lease")
        # A waiter breaks a lease whose record stays unchanged for a TTL by its clock:
        # over three TTLs it must never get the healthy one.
        waiter = _lease(store, bucket, "b/healthy.lease")
        beats: set[object] = set()
        end = time.monotonic() + 3 * TTL
        while time.monotonic() < end:
            assert not waiter.try_acquire(), "the healthy lease expired"
            beats.add(_record(store, bucket, "b/healthy.lease")["beat"])
            time.sleep(0.05)
        assert healthy.held and not healthy.lost
        # Renewed every TTL/4 throughout: about 12 different records seen, not 1 or 2.
        assert len(beats) >= 8, beats
        # The stalled one could not be renewed for a TTL: its holder knows.
        assert stalled.lost and not stalled.held
        assert proxy.injected.get("stall", 0) >= 2  # it kept trying, each try given up early
        proxy.set_faults([])
        stalled.release()  # still our record in the store: freed for others at once
        assert not list(store.list(bucket, "a/"))
        healthy.release()
        assert not list(store.list(bucket, "b/"))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_takes_and_beats_a_lease(
    server: EmbeddedServer, env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    report = tmp_path / "child.json"
    with FaultProxy(server.host, server.port, stall_seconds=STALL_SECONDS) as proxy:
        parents = _lease(S3Store(load_profile(endpoint_url=proxy.url)), bucket, "p/parent.lease")
        assert parents.try_acquire()
        # Fork while the parent's heartbeat is inside a request that hangs.
        proxy.set_faults([Fault("stall", 1.0, target="parent.lease")])
        _wait_for_stall(proxy, "parent.lease")
        pid = os.fork()
        if pid == 0:  # the child: report, and leave without running any of pytest
            code = 1
            try:
                store = S3Store(load_profile())
                mine = _lease(store, bucket, "c/child.lease")
                took = mine.try_acquire()
                time.sleep(3 * TTL)
                record = _record(store, bucket, "c/child.lease") if took else {}
                report.write_text(
                    json.dumps(
                        {
                            "took": took,
                            "held": mine.held,
                            "record": record,
                            "pid": os.getpid(),
                            "holder": mine.holder,
                            "parents_held_in_child": parents.held,
                        }
                    )
                )
                mine.release()
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 6 * TTL + 20
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        assert status is not None and os.waitstatus_to_exitcode(status) == 0
        child = json.loads(report.read_text())
        assert child["took"] and child["held"]
        assert child["record"]["holder"] == child["holder"]
        assert child["record"]["pid"] == child["pid"]
        # Beaten every TTL/4 over 3 TTLs: about 12 beats (old code: 0 or 1, then stuck
        # behind the parent's stalled lease, whose lock the child inherited held).
        assert child["record"]["beat"] >= 8, child
        assert child["parents_held_in_child"] is False  # the parent holds it, not the child
        proxy.set_faults([])
        parents.release()
