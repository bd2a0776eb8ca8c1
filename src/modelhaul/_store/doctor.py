"""``modelhaul doctor``: check a profile end to end and say how to fix what fails."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._core.errors import (
    AccessDenied,
    ClockSkew,
    CredentialsExpired,
    ModelhaulError,
    NoCredentials,
    WrongRegion,
)
from .._core.units import format_duration
from .s3 import BAD_KEY_CODES, S3Store, clock_skew

__all__ = ["Check", "run_doctor"]

# Beyond this, S3 refuses signed requests (RequestTimeTooSkewed).
MAX_SKEW = 300.0


@dataclass
class Check:
    """One check's outcome: ``ok`` True/False, or None when skipped."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


def run_doctor(store: S3Store, bucket: str | None) -> list[Check]:
    """Run every check in order; later checks are skipped once one they need fails."""
    p = store.profile
    checks: list[Check] = [
        Check(
            "profile",
            True,
            f"{p.describe()}, region {p.region} ({p.sources.get('region', 'default')})",
        )
    ]

    endpoint = p.endpoint_url or f"https://s3.{p.region}.amazonaws.com"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
        checks.append(Check("endpoint", True, f"{host}:{port} accepts connections"))
    except OSError as exc:
        checks.append(
            Check(
                "endpoint",
                False,
                f"cannot connect to {host}:{port}: {exc}",
                "check the endpoint URL (AWS_ENDPOINT_URL or the profile's "
                "endpoint_url) and that the store is running",
            )
        )
        return checks

    client = store.client(bucket)
    try:
        resp = client.list_buckets()
        names = [b["Name"] for b in resp.get("Buckets", [])]
        checks.append(Check("credentials", True, f"accepted ({len(names)} bucket(s) visible)"))
        skew = clock_skew(resp)
    except Exception as exc:
        err = store.translate(exc, "ListBuckets")
        # A refused request carries the store's time too (its Date header, and on AWS the
        # RequestTimeTooSkewed body): a wrong clock is exactly when the check matters.
        skew = clock_skew(getattr(exc, "response", None))
        if isinstance(err, ClockSkew):
            checks.append(
                Check("credentials", None, "not checked: the store refused the request's time")
            )
            skew = err.skew if err.skew is not None else skew
            checks.append(_clock_check(skew, refused=True, fix=err.hint))
            return checks  # every later request would be refused the same way
        bad_keys = isinstance(err, NoCredentials | CredentialsExpired) or (
            isinstance(err, AccessDenied) and err.code in BAD_KEY_CODES
        )
        if bad_keys:
            checks.append(Check("credentials", False, err.message, err.hint))
            return checks
        checks.append(
            Check(
                "credentials", None, f"ListBuckets not allowed ({err.message}); checking per bucket"
            )
        )
    if skew is not None:
        checks.append(_clock_check(skew))

    if bucket is None:
        checks.append(
            Check(
                "bucket",
                None,
                "no bucket given",
                "run `modelhaul doctor s3://BUCKET` to test reading and writing",
            )
        )
        return checks

    try:
        store.head_bucket(bucket)
        region = store._region_for(bucket)
        note = f" (found region {region} from the bucket's answer)" if region != p.region else ""
        checks.append(Check("bucket", True, f"{bucket} exists{note}"))
    except WrongRegion as exc:
        checks.append(Check("bucket", False, exc.message, exc.hint))
        return checks
    except ModelhaulError as exc:
        checks.append(Check("bucket", False, exc.message, exc.hint))
        return checks

    key = f".modelhaul-doctor/{secrets.token_hex(6)}"
    payload = secrets.token_bytes(1024)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("list", lambda: next(iter(store.list(bucket, "")), None)),
        ("put", lambda: store.put(bucket, key, payload)),
        ("get", lambda: _same(store.get_bytes(bucket, key), payload)),
        (
            "multipart",
            lambda: store.abort_multipart(bucket, key, store.create_multipart(bucket, key)),
        ),
        ("delete", lambda: store.delete(bucket, key)),
    ]
    for name, step in steps:
        try:
            step()
            checks.append(Check(name, True, "allowed"))
        except ModelhaulError as exc:
            checks.append(Check(name, False, exc.message, exc.hint))
    return checks


def _clock_check(skew: float | None, *, refused: bool = False, fix: str = "") -> Check:
    """The clock check: FAIL when the store refused the request's time, or the clock is
    more than :data:`MAX_SKEW` off the store's."""
    if skew is not None and abs(skew) <= MAX_SKEW and not refused:
        return Check("clock", True, f"within {abs(skew):.0f}s of the store's")
    if skew is None:
        detail = "the store refused the time the request was signed at"
    else:
        way = "ahead of" if skew > 0 else "behind"
        detail = (
            f"this machine's clock is {format_duration(abs(skew))} {way} the store's "
            f"({skew:+.0f}s)" + ("; the store refused the request" if refused else "")
        )
    return Check(
        "clock",
        False,
        detail,
        fix
        or "set the clock right (enable NTP: `timedatectl set-ntp true`, or `chronyc "
        "makestep`); S3 refuses requests more than 15 minutes off",
    )


def _same(got: bytes, want: bytes) -> None:
    if got != want:
        raise ModelhaulError(
            "the object read back differs from what was written",
            hint="the store or a proxy alters data; do not use it",
        )
