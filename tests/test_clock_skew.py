"""A client clock far off the store's: the store refuses every signed request with
``RequestTimeTooSkewed``, and modelhaul says ``ClockSkew``, how far off the clock is and
what to do — for ``cp`` and for ``doctor`` (whose clock check must FAIL, not be skipped).

The client really runs with a wrong clock: a child process under libfaketime (the
``faketime`` command; scripts/test.sh installs it). The store is the real SeaweedFS,
which checks the request time of SigV4 signatures itself (it answers a request signed an
hour off with 403 ``RequestTimeTooSkewed`` and its ``Date`` header), so no proxy is needed.
AWS's own body also carries ``RequestTime`` and ``ServerTime``; the last test reads those.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from modelhaul import ClockSkew, S3Store, load_profile

FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(
    FAKETIME is None, reason="faketime not installed (apt-get install faketime)"
)
# Offsets and how the message words them.
OFFSETS = {"+1h": "60 min ahead of", "-1h": "60 min behind"}
_ERROR = re.compile(r"^error: (\w+): (.*)$", re.M)


def run_skewed(offset: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``modelhaul ARGS`` in a child whose clock is ``offset`` off (it keeps ticking)."""
    assert FAKETIME is not None
    return subprocess.run(
        [FAKETIME, "-f", offset, sys.executable, "-m", "modelhaul", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _seconds_off(offset: str) -> int:
    return 3600 if offset.startswith("+") else -3600


@needs_faketime
@pytest.mark.parametrize("offset", list(OFFSETS))
def test_cp_with_a_skewed_clock_says_clock_skew(
    offset: str, env: dict[str, str], store: S3Store, bucket: str, tmp_path: Path
) -> None:
    store.put(bucket, "w.bin", b"weights")
    out = tmp_path / "out.bin"

    proc = run_skewed(offset, "cp", f"s3://{bucket}/w.bin", str(out), env=env)

    found = _ERROR.search(proc.stderr)
    assert found, proc.stderr
    assert found.group(1) == "ClockSkew", proc.stderr
    assert found.group(2).startswith(
        f"the store refused HeadObject of s3://{bucket}/w.bin: the time the request was "
        f"signed at is too far from the store's: this machine's clock is {OFFSETS[offset]} "
        "the store's"
    ), proc.stderr
    assert "code=RequestTimeTooSkewed" in found.group(2)
    assert "hint: set the clock right (enable NTP: `timedatectl set-ntp true`" in proc.stderr
    assert "lack permission" not in proc.stderr and "AccessDenied" not in proc.stderr
    assert proc.returncode == 1 and not out.exists()


@needs_faketime
@pytest.mark.parametrize("offset", list(OFFSETS))
def test_doctor_with_a_skewed_clock_fails_the_clock_check(
    offset: str, env: dict[str, str], bucket: str
) -> None:
    proc = run_skewed(offset, "doctor", f"s3://{bucket}", env=env)

    text = proc.stdout + proc.stderr
    clock = re.search(
        r"FAIL\s+clock: this machine's clock is (.+?) the store's \(([+-]\d+)s\)", text
    )
    assert clock, text
    assert clock.group(1) == OFFSETS[offset]
    # The Date header has whole seconds, and the answer takes a moment to come back.
    assert abs(int(clock.group(2)) - _seconds_off(offset)) <= 2, text
    assert "fix: set the clock right" in text
    assert re.search(r"skip\s+credentials: not checked", text), text
    assert not re.search(r"(ok|FAIL)\s+credentials", text), text
    assert proc.returncode == 1


@needs_faketime
def test_doctor_with_a_right_clock_passes_the_clock_check(env: dict[str, str], bucket: str) -> None:
    """The same path under faketime with no offset: faketime itself changes nothing."""
    proc = run_skewed("+0", "doctor", f"s3://{bucket}", env=env)
    assert re.search(r"ok\s+clock: within [0-2]s of the store's", proc.stdout), proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_aws_answer_gives_the_skew_from_its_own_times() -> None:
    """AWS's RequestTimeTooSkewed names both times: the skew is their difference, exactly,
    whatever this machine's clock says now."""
    store = S3Store(
        load_profile(
            provider="aws",
            access_key_id="k",
            secret_access_key="s",
            env={},
            config_file=Path(os.devnull),
        )
    )
    answer = {
        "Error": {
            "Code": "RequestTimeTooSkewed",
            "Message": "The difference between the request time and the current time is too large.",
            "RequestTime": "20240501T100000Z",
            "ServerTime": "2024-05-01T12:30:00Z",
            "MaxAllowedSkewMilliseconds": "900000",
        },
        "ResponseMetadata": {
            "HTTPStatusCode": 403,
            "RequestId": "R7",
            "HTTPHeaders": {"date": "Wed, 01 May 2024 12:30:00 GMT"},
        },
    }
    err = store.translate(
        botocore.exceptions.ClientError(answer, "GetObject"),  # type: ignore[arg-type]
        "GetObject",
        bucket="weights",
        key="m.bin",
    )
    assert isinstance(err, ClockSkew) and not isinstance(err, PermissionError)
    assert err.skew == -9000.0 and err.request_id == "R7"
    assert "this machine's clock is 2.5 h behind the store's" in err.message
