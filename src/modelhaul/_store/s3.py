"""The S3 implementation of :class:`~modelhaul._store.ObjectStore`, on botocore.

botocore builds and signs requests; the bodies of ranged GETs are read straight from
the HTTP response into the caller's buffer (``readinto``), which saves a copy per byte
compared with ``StreamingBody.read``. botocore's own retries are off: the transfer engine
retries whole requests and resumes broken bodies itself, and counts every retry.

Clients are made lazily, one per process: after a ``fork`` (a DataLoader worker, a
multiprocessing pool) the child makes its own instead of sharing the parent's sockets.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import http.client
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.auth
import botocore.config
import botocore.exceptions
import botocore.session
import botocore.utils
import urllib3.exceptions

from .._core.config import Profile
from .._core.errors import (
    AccessDenied,
    ClockSkew,
    CredentialsExpired,
    EndpointUnreachable,
    ModelhaulError,
    NoCredentials,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    ObjectChanged,
    PreconditionFailed,
    ServerError,
    StoreError,
    Throttled,
    WrongRegion,
    redact,
)
from .base import (
    Body,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    RangeReader,
    UploadInfo,
    ViewBody,
    iso_timestamp,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .crt import CrtRequests

__all__ = ["S3Store", "clock_skew"]

log = logging.getLogger("modelhaul.store")

T = TypeVar("T")

_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "ServiceUnavailable",
}
BAD_KEY_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "AuthFailure",
    "InvalidSecurity",
}
_EXPIRED_CODES = {"ExpiredToken", "TokenRefreshRequired", "RequestExpired", "ExpiredTokenException"}
_REGION_CODES = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
}
_NETWORK_ERRORS = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    socket.timeout,
    TimeoutError,
)


_PLAIN_S3V4 = "modelhaul-s3v4"


def _timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser, fast for the ISO 8601 form listings use; anything else
    (the RFC 1123 dates of headers, epoch numbers) goes to botocore's own."""
    parsed = iso_timestamp(value) if isinstance(value, str) else None
    return parsed if parsed is not None else botocore.utils.parse_timestamp(value)


def _choose_plain_signer(signature_version: Any = None, **_: Any) -> Any:
    # botocore's choose-signer event: a returned name replaces the signature version.
    return _PLAIN_S3V4 if signature_version == "s3v4" else None


def _no_botocore_redirect(context: dict[str, Any] | None = None, **_: Any) -> None:
    # botocore's S3 region redirector would re-sign for the bucket's region by itself, on
    # every client, whatever region the user chose; it also recursed through HeadBucket on a
    # 301 that names no region. S3Store._call decides instead (one place, with the rule
    # that a region the user gave is kept): marking the request as redirected already is
    # how botocore's redirector is told to leave it alone.
    redirect = (context or {}).get("s3_redirect")
    if isinstance(redirect, dict):
        redirect["redirected"] = True


def clock_skew(response: Mapping[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds this machine's clock is ahead of the store's (negative: behind), from a
    parsed S3 answer (botocore's ``response`` dict, a success or an error), or None.

    AWS's ``RequestTimeTooSkewed`` body carries ``RequestTime`` and ``ServerTime``, which
    say it exactly; otherwise the answer's ``Date`` header is compared with ``now``.
    """
    if not response:
        return None
    error = response.get("Error", {}) or {}
    server = _parse_time(error.get("ServerTime"))
    if server is not None:
        sent = _parse_time(error.get("RequestTime"))
        return (sent if sent is not None else time.time() if now is None else now) - server
    headers = (response.get("ResponseMetadata", {}) or {}).get("HTTPHeaders", {}) or {}
    date = _parse_time(headers.get("date"))
    if date is None:
        return None
    return (time.time() if now is None else now) - date


def _parse_time(text: Any) -> float | None:
    """A time as S3 writes it: ISO 8601 (``2024-05-01T12:00:00Z``), the basic form of
    ``x-amz-date`` (``20240501T120000Z``), or an HTTP date."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    for fmt in ("%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            moment = datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
        return moment.replace(tzinfo=datetime.timezone.utc).timestamp()
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _unb64(text: str | None) -> int | None:
    if not text or "-" in text:  # a COMPOSITE checksum ("...-N") is not a full-object CRC
        return None
    try:
        raw = base64.b64decode(text)
    except ValueError:
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def _quoted(etag: str) -> str:
    # Copy answers' ETags come unquoted from some stores (SeaweedFS), HEAD's quoted:
    # modelhaul compares ETags for equality, so keep one form.
    return etag if not etag or etag.startswith('"') else f'"{etag}"'


class S3Store(ObjectStore):
    """An S3-compatible store reached through one :class:`~modelhaul.Profile`.

    Args:
        profile: where the store is and how to sign for it.
        max_connections: connections kept per process (at least the transfer concurrency).
        connect_timeout: seconds to open a connection.
        read_timeout: seconds without a byte before a response is abandoned (the stall
            timeout).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        max_connections: int = 32,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.profile = profile
        self.checksums = profile.checksums
        self.conditional_writes = profile.conditional_writes
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._pid = -1
        self._clients: dict[str, S3Client] = {}
        self._bucket_region: dict[str, str] = {}
        self._session: botocore.session.Session | None = None
        self._hasty: dict[float, S3Store] = {}
        self._elsewhere: dict[str, S3Store] = {}  # for URLs signed for another endpoint
        self._crt: CrtRequests | None = None
        self._crt_pid = -1

    # -- clients -------------------------------------------------------------------

    def describe(self) -> str:
        return self.profile.describe()

    def __getstate__(self) -> dict[str, Any]:
        # Clients and locks do not cross process boundaries; the child makes its own.
        state = self.__dict__.copy()
        state.update(
            _lock=None, _pid=-1, _clients={}, _session=None, _hasty={}, _elsewhere={},
            _crt=None, _crt_pid=-1,
        )  # fmt: skip
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def with_timeout(self, seconds: float) -> S3Store:
        if seconds >= self._read_timeout and seconds >= self._connect_timeout:
            return self
        store = self._hasty.get(seconds)
        if store is None:
            # A few connections of its own, so a stalled request never holds one that a
            # transfer is waiting for; regions learnt by either store serve both.
            store = S3Store(
                self.profile,
                max_connections=4,
                connect_timeout=min(seconds, self._connect_timeout),
                read_timeout=min(seconds, self._read_timeout),
            )
            store._bucket_region = self._bucket_region
            store = self._hasty.setdefault(seconds, store)
        return store

    def _region_for(self, bucket: str | None) -> str:
        if bucket is not None and bucket in self._bucket_region:
            return self._bucket_region[bucket]
        return self.profile.region

    def region_of(self, bucket: str) -> str:
        """The region requests for ``bucket`` are signed for (learnt, else the profile's)."""
        return self._region_for(bucket)

    def credentials(self) -> Any:
        """botocore's credentials for this profile (refreshable ones refresh), or None
        where it finds none."""
        self.client()  # makes the session, with the profile's keys set on it
        assert self._session is not None  # narrowing: client() made it
        try:
            return self._session.get_credentials()
        except Exception as exc:  # an unreadable ~/.aws: the botocore path says what is wrong
            log.debug("no credentials for the CRT path: %s", exc)
            return None

    def url_for(self, bucket: str, key: str) -> str:
        """The URL botocore sends a request for ``key`` to (scheme, host, addressing
        style, region endpoint), without its query."""
        return (self.presigned_get(bucket, key, expires=60) or "").split("?", 1)[0]

    def small_requests(self, *, connect_timeout: float = 10.0) -> CrtRequests | None:
        """This process's CRT client for whole-object requests of small objects, or None
        where it would not behave as botocore does (see :mod:`modelhaul._store.crt`)."""
        from .crt import CrtRequests, orphan  # awscrt's S3 client: for the commands using it

        crt = self._live_crt()
        if crt is None:
            if self._crt is not None and self._crt_pid != os.getpid():  # the parent's: keep it
                orphan(self._crt)
            # One caller at a time makes it (a transfer command asks once, up front).
            crt = self._crt = CrtRequests.for_store(self, connect_timeout=connect_timeout)
            self._crt_pid = os.getpid()
        return crt

    def _live_crt(self) -> CrtRequests | None:
        """The CRT client this process made and has not closed, or None."""
        crt = self._crt
        if crt is None or self._crt_pid != os.getpid() or crt.closed:
            return None
        return crt

    def client(self, bucket: str | None = None) -> S3Client:
        """This process's botocore client for ``bucket``'s region, made on first use."""
        region = self._region_for(bucket)
        pid = os.getpid()
        if self._pid != pid:
            # Forked: never touch the parent's sockets or lock.
            self._lock = threading.Lock()
            self._clients = {}
            self._session = None
            self._pid = pid
        client = self._clients.get(region)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._make_client(region)
                self._clients[region] = client
        return client

    def _make_client(self, region: str) -> S3Client:
        p = self.profile
        session = self._session
        if session is None:
            session = (
                botocore.session.Session(profile=p.aws_profile)
                if p.aws_profile
                else (botocore.session.Session())
            )
            if p.access_key_id and p.secret_access_key:
                session.set_credentials(p.access_key_id, p.secret_access_key, p.session_token)
            session.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_timestamp
            )
            self._session = session
        config = botocore.config.Config(
            region_name=region,
            signature_version="s3v4",
            # With our CRC32C on every upload, a SHA-256 of each payload (what botocore
            # does by default over plain http) only burns CPU.
            s3={"addressing_style": p.addressing_style, "payload_signing_enabled": not p.checksums},
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._max_connections,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            tcp_keepalive=True,
            # We send our own CRC32C where the store accepts it, and nothing otherwise:
            # boto3 >= 1.36's default CRC headers are rejected by several S3-compatible
            # stores (older MinIO, Huawei OBS).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="modelhaul/0.1",
        )
        client: S3Client = session.create_client(  # type: ignore[assignment]
            "s3", region_name=region, endpoint_url=p.endpoint_url, config=config
        )
        # botocore signs with awscrt when it is installed, and the CRT signer copies every
        # request body into a BytesIO first (botocore/crt/auth.py) even when the payload
        # is not signed: 16 MiB per part, which left upload RSS at ~2x the part budget.
        # The pure-Python SigV4 signer reads the body only when it must hash it.
        botocore.auth.AUTH_TYPE_MAPS.setdefault(_PLAIN_S3V4, botocore.auth.S3SigV4Auth)
        client.meta.events.register("choose-signer.s3", _choose_plain_signer)
        client.meta.events.register("before-call.s3", _no_botocore_redirect)
        return client

    # -- error translation -----------------------------------------------------------

    def _call(
        self,
        operation: str,
        fn: Callable[[S3Client], T],
        *,
        bucket: str | None = None,
        key: str | None = None,
        body: Body | None = None,
    ) -> T:
        """Run one request, translating every foreign error.

        A bucket in another region than the one signed for is followed once, with a
        warning, when the region was only a guess (the preset's); a region the user gave
        (argument, environment, config file, ``~/.aws``) is kept, and the request fails
        with :class:`WrongRegion` naming the bucket's region. The request's ``body`` (a
        stream the first answer may have read part of) is sent again from where it began:
        otherwise the store waits for bytes that never come, until the read timeout.
        """
        start = body.tell() if isinstance(body, ViewBody) else 0
        for attempt in range(2):
            if attempt and isinstance(body, ViewBody):
                body.seek(start)
            try:
                return fn(self.client(bucket))
            except ModelhaulError:
                raise
            except Exception as exc:
                err = self.translate(exc, operation, bucket=bucket, key=key)
                if (
                    isinstance(err, WrongRegion)
                    and bucket is not None
                    and err.region
                    and err.region != self._region_for(bucket)
                    and not self.profile.region_given
                ):
                    log.warning(
                        "bucket %s is in region %s, not %s: switching",
                        bucket,
                        err.region,
                        self._region_for(bucket),
                    )
                    self._bucket_region[bucket] = err.region
                    continue
                raise err from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def translate(
        self,
        exc: BaseException,
        operation: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
    ) -> ModelhaulError:
        """Map a botocore/urllib3/socket error to the most specific modelhaul error."""
        endpoint = self.profile.endpoint_url or f"AWS S3 ({self._region_for(bucket)})"
        where = (
            f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}" if bucket else endpoint
        )
        common: dict[str, Any] = {
            "endpoint": endpoint,
            "bucket": bucket,
            "key": key,
            "operation": operation,
        }
        if isinstance(exc, botocore.exceptions.ClientError):
            return self._translate_client_error(exc, where, common)
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
        ):
            return NoCredentials(
                f"no credentials found for {self.profile.describe()}",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, use --profile, or add "
                "credentials to the modelhaul config file",
            )
        if isinstance(
            exc,
            botocore.exceptions.CredentialRetrievalError
            | botocore.exceptions.RefreshWithMFAUnsupportedError,
        ):
            return CredentialsExpired(
                f"credentials for {self.profile.describe()} could not be refreshed: "
                f"{redact(str(exc), self.profile.secrets)}",
                hint="log in again (e.g. `aws sso login`) or renew the session token",
                **common,
            )
        if isinstance(
            exc,
            botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError,
        ):
            return EndpointUnreachable(
                f"cannot connect to {endpoint} for {where}",
                hint="check the endpoint URL and that the store is running and reachable "
                "(`modelhaul doctor` tests it step by step)",
                **common,
            )
        if isinstance(exc, _NETWORK_ERRORS):
            return ServerError(
                f"connection to {endpoint} broke during {operation} of {where}: "
                f"{type(exc).__name__}: {redact(str(exc), self.profile.secrets)}",
                hint="the network or the store dropped the request; it is retried automatically",
                retryable=True,
                **common,
            )
        return StoreError(
            f"{operation} of {where} failed: {type(exc).__name__}: "
            f"{redact(str(exc), self.profile.secrets)}",
            **common,
        )

    def _translate_client_error(
        self, exc: botocore.exceptions.ClientError, where: str, common: dict[str, Any]
    ) -> ModelhaulError:
        response: Mapping[str, Any] = exc.response
        error = response.get("Error", {})
        meta = response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = str(error.get("Code") or status or "")
        headers = meta.get("HTTPHeaders", {}) or {}
        fields = dict(common, status=status, code=code, request_id=meta.get("RequestId") or None)
        bucket, operation = common["bucket"], common["operation"]
        text = redact(str(error.get("Message") or ""), self.profile.secrets)

        if code == "NoSuchBucket" or (status == 404 and operation == "HeadBucket"):
            return NoSuchBucket(
                f"bucket {bucket!r} does not exist at {fields['endpoint']}",
                hint=f"create it, or check the bucket name and the endpoint/profile "
                f"({self.profile.name})",
                **fields,
            )
        if code == "NoSuchUpload":
            return NoSuchUpload(
                f"the store has no multipart upload {common.get('upload_id', '')}for {where}",
                hint="it was completed, aborted or expired; the transfer starts that file over",
                **fields,
            )
        if code in ("NoSuchKey", "NotFound") or status == 404:
            if operation == "HeadObject" and bucket and not self._bucket_exists(bucket):
                return NoSuchBucket(
                    f"bucket {bucket!r} does not exist at {fields['endpoint']}",
                    hint="create it, or check the bucket name and the endpoint/profile",
                    **fields,
                )
            return NoSuchKey(
                f"{where} does not exist",
                hint="check the key (`modelhaul ls` lists what is there)",
                **fields,
            )
        if status == 403 and code in ("403", "Forbidden") and bucket:
            # A HEAD answer has no body, so no code: ask again with a GET, whose error
            # body says whether the keys are wrong or only a permission is missing.
            code = self._probe_403_code(bucket, common["key"]) or code
            fields["code"] = code
        if code == "RequestTimeTooSkewed":
            return ClockSkew(
                f"the store refused {operation} of {where}: the time the request was signed "
                "at is too far from the store's",
                skew=clock_skew(response),
                **fields,
            )
        if code in _EXPIRED_CODES:
            return CredentialsExpired(
                f"the session token for {self.profile.describe()} has expired",
                hint="get fresh temporary credentials (AWS_SESSION_TOKEN), or use a profile "
                "whose credentials refresh themselves (role, SSO, credential_process)",
                **fields,
            )
        if code in BAD_KEY_CODES:
            what = (
                "access key id is unknown"
                if code == "InvalidAccessKeyId"
                else "secret key is wrong"
            )
            return AccessDenied(
                f"the store rejected the credentials of {self.profile.describe()}: the {what}",
                hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile's keys",
                **fields,
            )
        bucket_region = headers.get("x-amz-bucket-region") or error.get("Region")
        signed_for = self._region_for(bucket)
        # AWS answers a HEAD signed for the wrong region with a bare 400 (no body, so no
        # code) that still names the bucket's region in a header.
        elsewhere = status == 400 and bucket_region and bucket_region != signed_for
        if code in _REGION_CODES or status == 301 or elsewhere:
            return self._wrong_region(bucket, bucket_region, status, fields)
        if code in ("AccessDenied", "AllAccessDisabled", "Forbidden") or status == 403:
            return AccessDenied(
                f"access to {where} was denied: {text or code}",
                hint="the credentials are valid but lack permission for this request; ask for "
                "the s3 permission it needs, or use another profile",
                **fields,
            )
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return PreconditionFailed(
                f"{where} changed: a conditional {operation} did not hold",
                hint="someone else wrote it at the same time; run the command again",
                **fields,
            )
        if code in _THROTTLE_CODES or status in (429, 503):
            return Throttled(
                f"the store asked to slow down ({code}) on {where}",
                hint="retried automatically with backoff; lower --concurrency if it persists",
                **fields,
            )
        if code in ("RequestTimeout", "InternalError") or (status or 0) >= 500:
            return ServerError(
                f"the store failed {operation} of {where}: {code} {text}".rstrip(),
                hint="retried automatically; if it persists, check the store's health",
                retryable=True,
                **fields,
            )
        return StoreError(f"{operation} of {where} failed: {code} {text}".rstrip(), **fields)

    def _wrong_region(
        self, bucket: str | None, region: str | None, status: int | None, fields: dict[str, Any]
    ) -> WrongRegion:
        signed_for = self._region_for(bucket)
        if region is None and status == 301:
            err = WrongRegion(
                f"the store at {fields['endpoint']} answers with redirects (HTTP 301) that "
                "name no region",
                hint="check the endpoint URL (https:// rather than http://?) and the bucket's "
                "region (AWS_REGION)",
                **fields,
            )
        elif region is None:
            err = WrongRegion(
                f"bucket {bucket!r} is not in region {signed_for}",
                hint="set the bucket's region with AWS_REGION or the profile's region",
                **fields,
            )
        else:
            came_from = self.profile.sources.get("region")
            given = f"the region {signed_for} came from {came_from}; " if came_from else ""
            err = WrongRegion(
                f"bucket {bucket!r} is in region {region}, not in {signed_for}",
                hint=f"{given}set AWS_REGION={region} (or the profile's region), or leave "
                "the region unset to follow the bucket",
                **fields,
            )
        err.region = region
        return err

    def _probe_403_code(self, bucket: str, key: str | None) -> str | None:
        try:
            if key:
                self.client(bucket).get_object(Bucket=bucket, Key=key, Range="bytes=0-0")
            else:
                self.client(bucket).list_objects_v2(Bucket=bucket, MaxKeys=1)
        except botocore.exceptions.ClientError as exc:
            return str(exc.response.get("Error", {}).get("Code") or "") or None
        except Exception:
            return None
        return None

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.client(bucket).head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status != 404
        except Exception:
            return True
        return True

    # -- the interface -----------------------------------------------------------------

    def head_bucket(self, bucket: str) -> None:
        self._call("HeadBucket", lambda c: c.head_bucket(Bucket=bucket), bucket=bucket)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        extra: dict[str, Any] = {"ChecksumMode": "ENABLED"} if self.checksums else {}
        try:
            r = self._call(
                "HeadObject",
                lambda c: c.head_object(Bucket=bucket, Key=key, **extra),
                bucket=bucket,
                key=key,
            )
        except StoreError as exc:
            if isinstance(exc, WrongRegion | ClockSkew):
                raise
            if exc.status not in (400, 403) or not (exc.code is None or exc.code.isdigit()):
                raise
            # An answer to HEAD has no body, so a bare 400/403 says nothing of why (an
            # expired token, a wrong region, a bad signature): a 1-byte GET learns the code.
            try:
                self._call(
                    "GetObject",
                    lambda c: c.get_object(Bucket=bucket, Key=key, Range="bytes=0-0"),
                    bucket=bucket,
                    key=key,
                )
            except StoreError as precise:
                if precise.code and not precise.code.isdigit():
                    raise precise from exc
            raise
        if not r.get("ETag"):
            # Every S3 store sends an ETag: a HEAD answer without one was cut in its
            # headers, and its Content-Length cannot be trusted either.
            raise ServerError(
                f"the store's answer to HEAD s3://{bucket}/{key} was incomplete (no ETag)",
                hint="retried automatically",
                endpoint=self.profile.endpoint_url,
                bucket=bucket,
                key=key,
                operation="HeadObject",
                retryable=True,
            )
        return ObjectInfo(
            key=key,
            size=int(r["ContentLength"]),
            etag=r.get("ETag", ""),
            last_modified=r["LastModified"].timestamp() if r.get("LastModified") else 0.0,
            crc32c=_unb64(r.get("ChecksumCRC32C")) if self.checksums else None,
            metadata={k.lower(): v for k, v in (r.get("Metadata") or {}).items()},
        )

    def open_range(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int,
        *,
        if_match: str | None = None,
        object_size: int | None = None,
        checksum: bool = False,
    ) -> RangeReader:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        whole = checksum and self.checksums and start == 0 and end == object_size
        if whole:
            # Stores send the full-object checksum only with a GET of the whole object.
            del kwargs["Range"]
            kwargs["ChecksumMode"] = "ENABLED"
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            r = self._call("GetObject", lambda c: c.get_object(**kwargs), bucket=bucket, key=key)
        except PreconditionFailed as exc:
            raise ObjectChanged(
                f"s3://{bucket}/{key} was replaced while it was being read",
                hint="the download restarts from the new version",
                endpoint=exc.endpoint,
                bucket=bucket,
                key=key,
                status=exc.status,
                code=exc.code,
                request_id=exc.request_id,
                operation="GetObject",
            ) from exc
        length = int(r.get("ContentLength", -1))
        if whole and length != end:
            r["Body"].close()
            raise ObjectChanged(
                f"s3://{bucket}/{key} is {length} bytes, not the {end} expected",
                hint="the download restarts from a fresh look at the object",
                bucket=bucket,
                key=key,
                operation="GetObject",
            )
        if length != end - start:
            r["Body"].close()
            raise ServerError(
                f"s3://{bucket}/{key}: asked for {end - start} bytes at {start}, the store "
                f"answered {length}",
                hint="the object may have shrunk; run the command again",
                bucket=bucket,
                key=key,
                operation="GetObject",
                retryable=True,
            )
        total = str(r.get("ContentRange", "")).rpartition("/")[2]
        if object_size is not None and total.isdigit() and int(total) != object_size:
            # What we were told about the object (a HEAD, a listing) was wrong or stale:
            # start the object over from a fresh look rather than trust either.
            r["Body"].close()
            raise ObjectChanged(
                f"s3://{bucket}/{key} is {total} bytes, not the {object_size} expected",
                hint="the download restarts from a fresh look at the object",
                bucket=bucket,
                key=key,
                operation="GetObject",
            )
        reader = _S3RangeReader(self, r["Body"], bucket, key)
        if whole:
            reader.crc32c = _unb64(r.get("ChecksumCRC32C"))
        return reader

    def put(
        self,
        bucket: str,
        key: str,
        body: Body,
        *,
        crc32c: int | None = None,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body}
        if crc32c is not None and self.checksums:
            kwargs["ChecksumCRC32C"] = _b64(crc32c)
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if metadata:
            kwargs["Metadata"] = dict(metadata)
        r = self._call(
            "PutObject", lambda c: c.put_object(**kwargs), bucket=bucket, key=key, body=body
        )
        return r.get("ETag", "")

    def create_multipart(
        self,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if self.checksums:
            kwargs.update(ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT")
        if metadata:
            kwargs["Metadata"] = dict(metadata)
        if storage_class:
            kwargs["StorageClass"] = storage_class
        r = self._call(
            "CreateMultipartUpload",
            lambda c: c.create_multipart_upload(**kwargs),
            bucket=bucket,
            key=key,
        )
        return r["UploadId"]

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: Body,
        *,
        crc32c: int | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "Body": body,
        }
        if crc32c is not None and self.checksums:
            kwargs["ChecksumCRC32C"] = _b64(crc32c)
        r = self._call(
            "UploadPart", lambda c: c.upload_part(**kwargs), bucket=bucket, key=key, body=body
        )
        return r["ETag"]

    def presigned_get(
        self, bucket: str, key: str, *, expires: int = 3600, endpoint: str | None = None
    ) -> str | None:
        store = self
        if endpoint and endpoint.rstrip("/") != (self.profile.endpoint_url or "").rstrip("/"):
            with self._lock:
                store = self._elsewhere.get(endpoint) or S3Store(
                    replace(self.profile, endpoint_url=endpoint), max_connections=1
                )
                store._bucket_region = self._bucket_region
                self._elsewhere[endpoint] = store
        # Signing only (SigV4 query parameters): no request is made.
        url: str = store.client(bucket).generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
        return url

    def same_store(self, other: ObjectStore) -> bool:
        """The same endpoint (AWS's own when None) and the same credentials: then S3 copies
        between the two stores' buckets itself. The signing region may differ (a copy is
        signed for the destination's)."""
        if other is self:
            return True
        if not isinstance(other, S3Store):
            return False
        a, b = self.profile, other.profile
        return (a.endpoint_url or "").rstrip("/") == (b.endpoint_url or "").rstrip("/") and (
            a.access_key_id,
            a.secret_access_key,
            a.session_token,
            a.aws_profile,
        ) == (b.access_key_id, b.secret_access_key, b.session_token, b.aws_profile)

    def _copy_call(
        self, operation: str, fn: Callable[[S3Client], T], src: str, *, bucket: str, key: str
    ) -> T:
        try:
            return self._call(operation, fn, bucket=bucket, key=key)
        except PreconditionFailed as exc:
            # Only the source is conditional (x-amz-copy-source-if-match).
            raise ObjectChanged(
                f"{src} was replaced before it could be copied",
                hint="the copy starts again from the new version",
                endpoint=exc.endpoint,
                bucket=bucket,
                key=key,
                status=exc.status,
                code=exc.code,
                request_id=exc.request_id,
                operation=operation,
            ) from exc

    def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        *,
        if_match: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "CopySource": {"Bucket": src_bucket, "Key": src_key},
        }
        if if_match:
            kwargs["CopySourceIfMatch"] = if_match
        if metadata is not None:
            # REPLACE also makes a copy onto itself legal where only the storage class
            # changes (SeaweedFS refuses that with COPY).
            kwargs.update(MetadataDirective="REPLACE", Metadata=dict(metadata))
        if storage_class:
            kwargs["StorageClass"] = storage_class
        if self.checksums:
            # The copy keeps (or computes) a full-object CRC32C, not the store's default.
            kwargs["ChecksumAlgorithm"] = "CRC32C"
        r = self._copy_call(
            "CopyObject",
            lambda c: c.copy_object(**kwargs),
            f"s3://{src_bucket}/{src_key}",
            bucket=bucket,
            key=key,
        )
        return _quoted(r.get("CopyObjectResult", {}).get("ETag", ""))

    def upload_part_copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        byte_range: tuple[int, int],
        *,
        if_match: str | None = None,
    ) -> tuple[str, int | None]:
        start, end = byte_range
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "CopySource": {"Bucket": src_bucket, "Key": src_key},
            "CopySourceRange": f"bytes={start}-{end - 1}",
        }
        if if_match:
            kwargs["CopySourceIfMatch"] = if_match
        r = self._copy_call(
            "UploadPartCopy",
            lambda c: c.upload_part_copy(**kwargs),
            f"s3://{src_bucket}/{src_key}",
            bucket=bucket,
            key=key,
        )
        result = r.get("CopyPartResult", {})
        crc = _unb64(result.get("ChecksumCRC32C")) if self.checksums else None
        return _quoted(result.get("ETag", "")), crc

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        parts: list[PartInfo] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        while True:
            r = self._call(
                "ListParts",
                lambda c: c.list_parts(**kwargs),
                bucket=bucket,
                key=key,
            )
            parts.extend(
                PartInfo(p["PartNumber"], p["Size"], p["ETag"]) for p in r.get("Parts", [])
            )
            if not r.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = int(r["NextPartNumberMarker"])

    def complete_multipart(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str, int | None]],
        *,
        crc32c: int | None = None,
        if_none_match: bool = False,
    ) -> str:
        listed: list[dict[str, Any]] = []
        for number, etag, part_crc in parts:
            entry: dict[str, Any] = {"PartNumber": number, "ETag": etag}
            if part_crc is not None and self.checksums:
                entry["ChecksumCRC32C"] = _b64(part_crc)
            listed.append(entry)
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": listed},
        }
        if crc32c is not None and self.checksums:
            kwargs.update(ChecksumCRC32C=_b64(crc32c), ChecksumType="FULL_OBJECT")
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        r = self._call(
            "CompleteMultipartUpload",
            lambda c: c.complete_multipart_upload(**kwargs),
            bucket=bucket,
            key=key,
        )
        return r.get("ETag", "")

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        with contextlib.suppress(NoSuchUpload):
            self._call(
                "AbortMultipartUpload",
                lambda c: c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
                bucket=bucket,
                key=key,
            )

    def list_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        out: list[UploadInfo] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            r = self._call(
                "ListMultipartUploads", lambda c: c.list_multipart_uploads(**kwargs), bucket=bucket
            )
            out.extend(
                UploadInfo(u["Key"], u["UploadId"], u["Initiated"].timestamp())
                for u in r.get("Uploads", [])
            )
            if not r.get("IsTruncated"):
                return out
            kwargs.update(KeyMarker=r["NextKeyMarker"], UploadIdMarker=r["NextUploadIdMarker"])

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        # Pages on the CRT where a caller made its client already (a recursive copy: ~20 ms
        # less CPU a page than botocore's parser); the first page that does not go right
        # there, and the rest, on botocore. Not made here: a long-lived process (serve)
        # would keep the CRT's connections to the store open for a listing now and then.
        crt = self._live_crt()
        while crt is not None:
            page = crt.list_page(
                bucket, prefix, kwargs.get("ContinuationToken"), timeout=self._read_timeout
            )
            if page is None:
                break
            items, token = page
            yield from items
            if token is None:
                return
            kwargs["ContinuationToken"] = token
        while True:
            r = self._call("ListObjectsV2", lambda c: c.list_objects_v2(**kwargs), bucket=bucket)
            for item in r.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=item.get("ETag", ""),
                    last_modified=item["LastModified"].timestamp(),
                )
            if not r.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = r["NextContinuationToken"]

    def delete(self, bucket: str, key: str) -> None:
        self._call(
            "DeleteObject",
            lambda c: c.delete_object(Bucket=bucket, Key=key),
            bucket=bucket,
            key=key,
        )


class _S3RangeReader(RangeReader):
    """Reads a GetObject body straight into caller buffers.

    botocore's StreamingBody wraps urllib3's response, which wraps http.client's; the
    innermost one reads from the socket into the buffer we pass (``recv_into``), with no
    intermediate bytes objects. Where that layer is not there (another HTTP stack), the
    StreamingBody's own ``read`` is used.
    """

    def __init__(self, store: S3Store, body: Any, bucket: str, key: str) -> None:
        self._store = store
        self._body = body
        self._bucket = bucket
        self._key = key
        raw = getattr(body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        self._raw = raw
        self._fp = fp if isinstance(fp, http.client.HTTPResponse) else None
        self._done = False

    def readinto(self, buffer: memoryview) -> int:
        """Read what one ``recv`` gives (at most ``len(buffer)`` bytes).

        One system call per read, on purpose: a buffered ``readinto`` loops until the
        buffer is full, and when the connection breaks midway it raises and loses every
        byte it had already copied — so a range cut every few hundred KiB would never
        advance. Here each byte received is returned before the next read can fail.
        """
        try:
            fp = self._fp
            if fp is not None and not fp.chunked and fp.length is not None and fp.fp:
                if fp.length == 0:
                    n = 0
                else:
                    view = buffer[: min(len(buffer), fp.length)]
                    n = fp.fp.readinto1(view)
                    # Keep http.client's own bookkeeping, as its readinto would.
                    fp.length -= n
                    if n == 0 or fp.length == 0:
                        fp._close_conn()  # type: ignore[attr-defined]
            else:
                data = fp.read1(len(buffer)) if fp is not None else self._body.read(len(buffer))
                n = len(data)
                buffer[:n] = data
        except Exception as exc:
            raise self._fail(exc) from exc
        if n == 0:
            self._done = True
        return n

    def _fail(self, exc: BaseException) -> ModelhaulError:
        return self._store.translate(exc, "GetObject", bucket=self._bucket, key=self._key)

    def close(self) -> None:
        try:
            finished = self._done or (self._fp is not None and self._fp.isclosed())
            if finished and self._raw is not None and hasattr(self._raw, "release_conn"):
                self._raw.release_conn()
            else:
                # An unfinished body: drop the connection rather than drain it.
                self._body.close()
        except Exception:  # noqa: S110 - closing a broken connection may fail; nothing to do
            pass
