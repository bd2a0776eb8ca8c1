"""``modelhaul doctor``: check a profile end to end and say how to fix what fails."""

from __future__ import annotations

import email.utils
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._core.errors import (
    AccessDenied,
    CredentialsExpired,
    ModelhaulError,
    NoCredentials,
    WrongRegion,
)
from .s3 import BAD_KEY_CODES, S3Store

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
            p.describe() + (f", region {p.region}" + ("" if p.region_given else " (default)")),
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
        date = resp["ResponseMetadata"]["HTTPHeaders"].get("date")
    except Exception as exc:
        err = store.translate(exc, "ListBuckets")
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
        date = None
    if date:
        skew = time.time() - email.utils.parsedate_to_datetime(date).timestamp()
        if abs(skew) > MAX_SKEW:
            checks.append(
                Check(
                    "clock",
                    False,
                    f"local clock is {skew:+.0f}s off the store's",
                    "sync the clock (e.g. enable NTP / chrony); S3 rejects "
                    "requests more than 15 minutes off",
                )
            )
        else:
            checks.append(Check("clock", True, f"within {abs(skew):.0f}s of the store's"))

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


def _same(got: bytes, want: bytes) -> None:
    if got != want:
        raise ModelhaulError(
            "the object read back differs from what was written",
            hint="the store or a proxy alters data; do not use it",
        )
