"""The one exception tree of modelhaul.

Everything modelhaul raises derives from :class:`ModelhaulError`. Where a built-in
exception has the same meaning it is a second base, so ``except FileNotFoundError``
and ``except modelhaul.NotFound`` both work::

    ModelhaulError
    ├── ConfigError (ValueError)            bad profile, config file or option
    │   ├── InvalidURI                      not a path or s3://bucket/key
    │   ├── InvalidRepoId                   not ORG/NAME[@REVISION]
    │   ├── MissingExtra (ImportError)      an optional dependency is not installed
    │   └── NoCredentials                   no credentials anywhere
    ├── UnsafePath (ValueError)             a path that escapes its folder
    │   └── UnsafeSymlink                   a pushed folder links outside itself
    ├── NotFound (FileNotFoundError)
    │   ├── LocalFileNotFound               the local source does not exist
    │   ├── NoSuchModel                     no source knows the repository
    │   ├── NoSuchRevision                  the repository has no such revision or ref
    │   ├── NotCached                       offline, and the cache lacks it
    │   ├── NoSuchBucket       (StoreError)
    │   ├── NoSuchKey          (StoreError)
    │   └── NoSuchUpload       (StoreError) the store forgot a multipart upload
    ├── StoreError                          anything the object store answered
    │   ├── AccessDenied (PermissionError)  wrong key/secret, or no permission
    │   │   └── CredentialsExpired          a session token ran out
    │   ├── ClockSkew                       this machine's clock is too far off the store's
    │   ├── WrongRegion
    │   ├── EndpointUnreachable (ConnectionError)
    │   ├── Throttled                       503 SlowDown and friends
    │   ├── PreconditionFailed              a conditional request lost
    │   │   └── ObjectChanged               replaced while we were reading it
    │   └── ServerError                     5xx the store could not explain
    ├── IntegrityError
    │   ├── ChecksumMismatch                bytes differ from what was promised
    │   │   └── RevisionTampered            a published revision's object was replaced
    │   ├── SourceChanged                   a local file changed while it was uploaded
    │   ├── BadContent                      an empty file or an HTML page for weights
    │   ├── ManifestError                   a manifest that is not valid
    │   ├── RevisionIdMismatch              a manifest that does not hash to its pinned id
    │   ├── SignatureError                  a signature check refused a revision
    │   │   ├── SignatureMissing            the revision carries no signature
    │   │   │   └── SignatureRemoved        ... though it was signed when published
    │   │   ├── SignatureInvalid            not signed by the trusted key
    │   │   └── SignatureMismatch           files differ from what was signed
    │   ├── InvalidSafetensors              an object that is not a safetensors file
    │   └── TruncatedObject                 an object shorter than its own header says
    ├── SourcesFailed                       no source could serve; each one's reason
    ├── HubError                            an origin hub (Hugging Face...) failed
    ├── RevisionConflict                    a published revision holds other content
    ├── LockTimeout (TimeoutError)          a lock's live holder kept it too long
    ├── CacheError                          the local cache cannot be used
    ├── DiskFull (OSError)                  no space, or a file-size limit
    ├── TransferFailed                      parts failed after all retries
    ├── TransferBusy                        another process writes the same destination
    ├── Cancelled                           Ctrl-C, or a fatal error in another file
    ├── RankFailed                          a rank of a distributed load failed or left
    └── ServerStartError                    the embedded SeaweedFS would not start

Every message says what happened and what to do next. Errors carry the fields a
program needs (``endpoint``, ``bucket``, ``key``, ``status``, ``code``,
``request_id``, ``part``, ``attempts``, ``retryable``). Secrets never appear in a
message: nothing here formats credentials, and :func:`redact` scrubs text that
came from elsewhere before it is shown.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AccessDenied",
    "BadContent",
    "CacheError",
    "Cancelled",
    "ChecksumMismatch",
    "ClockSkew",
    "ConfigError",
    "CredentialsExpired",
    "DiskFull",
    "EndpointUnreachable",
    "HubError",
    "IntegrityError",
    "InvalidRepoId",
    "InvalidSafetensors",
    "InvalidURI",
    "LocalFileNotFound",
    "LockTimeout",
    "ManifestError",
    "MissingExtra",
    "ModelhaulError",
    "NoCredentials",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchModel",
    "NoSuchRevision",
    "NoSuchUpload",
    "NotCached",
    "NotFound",
    "ObjectChanged",
    "PartFailure",
    "PreconditionFailed",
    "RankFailed",
    "RevisionConflict",
    "RevisionIdMismatch",
    "RevisionTampered",
    "ServerError",
    "ServerStartError",
    "SignatureError",
    "SignatureInvalid",
    "SignatureMismatch",
    "SignatureMissing",
    "SignatureRemoved",
    "SourceChanged",
    "SourcesFailed",
    "StoreError",
    "Throttled",
    "TransferBusy",
    "TransferFailed",
    "TruncatedObject",
    "UnsafePath",
    "UnsafeSymlink",
    "WrongRegion",
]


class ModelhaulError(Exception):
    """Base of every error modelhaul raises.

    Attributes:
        hint: what the user should do next, one sentence.
        retryable: whether trying the same thing again can help.
    """

    retryable: bool = False

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  hint: {hint}" if hint else message)


class ConfigError(ModelhaulError, ValueError):
    """A profile, config file, environment variable or option is wrong."""


class InvalidURI(ConfigError):
    """A location is neither a local path nor ``s3://bucket/key``."""


class NoCredentials(ConfigError):
    """No credentials were found in arguments, environment, config file or ~/.aws."""


class UnsafePath(ModelhaulError, ValueError):
    """A relative path that would land outside the folder it belongs to."""


class NotFound(ModelhaulError, FileNotFoundError):
    """Something asked for does not exist."""


class LocalFileNotFound(NotFound):
    """A local source file or folder does not exist."""


class StoreError(ModelhaulError):
    """The object store refused a request or could not be reached.

    Attributes:
        endpoint: the store's URL (no credentials in it).
        bucket: the bucket, when the request named one.
        key: the object key, when the request named one.
        status: the HTTP status, when the store answered.
        code: the store's error code (``NoSuchBucket``, ``SlowDown``...).
        request_id: the store's request id, for its support.
        operation: the S3 operation (``GetObject``...).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        endpoint: str | None = None,
        bucket: str | None = None,
        key: str | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        operation: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.key = key
        self.status = status
        self.code = code
        self.request_id = request_id
        self.operation = operation
        if retryable is not None:
            self.retryable = retryable
        details = [
            f"{name}={value}"
            for name, value in (
                ("operation", operation),
                ("status", status),
                ("code", code),
                ("endpoint", endpoint),
                ("request_id", request_id),
            )
            if value is not None
        ]
        if details:
            message = f"{message} [{', '.join(details)}]"
        super().__init__(message, hint=hint)


class NoSuchBucket(StoreError, NotFound):
    """The bucket does not exist at this endpoint."""


class NoSuchKey(StoreError, NotFound):
    """The object does not exist."""


class NoSuchUpload(StoreError, NotFound):
    """The store has no multipart upload with this id (completed, aborted or expired)."""


class AccessDenied(StoreError, PermissionError):
    """The credentials were refused, or they lack a permission."""


class CredentialsExpired(AccessDenied):
    """Temporary credentials ran out and could not be refreshed."""


class ClockSkew(StoreError):
    """The store refused a request because this machine's clock is too far from its own.

    Request signatures carry the time; stores refuse those more than 15 minutes off.

    Attributes:
        skew: seconds this clock is ahead of the store's (negative: behind), when known.
    """

    def __init__(self, message: str, *, skew: float | None = None, **fields: Any) -> None:
        from .units import format_duration  # units imports this module

        self.skew = skew
        if skew is not None:
            way = "ahead of" if skew > 0 else "behind"
            message = (
                f"{message}: this machine's clock is {format_duration(abs(skew))} {way} the store's"
            )
        fields.setdefault(
            "hint",
            "set the clock right (enable NTP: `timedatectl set-ntp true`, or `chronyc makestep`), "
            "then run the same command again",
        )
        super().__init__(message, **fields)


class WrongRegion(StoreError):
    """The bucket lives in another region than the one the request was signed for.

    Attributes:
        region: the bucket's region, when the store said it.
    """

    region: str | None = None


class EndpointUnreachable(StoreError, ConnectionError):
    """No connection to the store's endpoint."""

    retryable = True


class Throttled(StoreError):
    """The store asked us to slow down (503 SlowDown, 429...)."""

    retryable = True


class PreconditionFailed(StoreError):
    """A conditional request (If-Match, If-None-Match) did not hold."""


class ObjectChanged(PreconditionFailed):
    """The object was replaced while it was being read."""


class ServerError(StoreError):
    """The store failed in a way it did not explain (5xx, a cut connection)."""

    retryable = True


class IntegrityError(ModelhaulError):
    """Data is not what it should be."""


class ChecksumMismatch(IntegrityError):
    """Bytes do not match the checksum or size they were promised to have.

    Attributes:
        what: the file or object checked.
        algorithm: ``crc32c``, ``sha256`` or ``size``.
        expected: what the source promised.
        actual: what arrived.
    """

    def __init__(
        self, what: str, *, algorithm: str, expected: str, actual: str, hint: str = ""
    ) -> None:
        self.what = what
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{algorithm} of {what} is {actual}, expected {expected}",
            hint=hint
            or "the data was altered or damaged in transit; run the command again, "
            "and if it fails the same way the source itself is damaged",
        )


class RevisionTampered(ChecksumMismatch):
    """An object of a published revision is not the one its manifest recorded.

    A published revision never changes, so this is not a race to retry: the mirror holds
    other bytes than it published (overwritten by a tool that bypassed modelhaul, or
    tampered with).

    Attributes:
        revision: ``ORG/NAME@REVISION``.
        path: the file's path in the revision.
    """

    def __init__(
        self, revision: str, path: str, *, expected_etag: str, actual_etag: str, where: str
    ) -> None:
        self.revision = revision
        self.path = path
        self.what = f"{path} of {revision}"
        self.algorithm = "etag"
        self.expected = expected_etag
        self.actual = actual_etag
        IntegrityError.__init__(
            self,
            f"{path} of published revision {revision} in {where} was replaced after it was "
            f"published: the manifest records ETag {expected_etag}, the store holds {actual_etag}",
            hint="a published revision never changes, so nothing was downloaded from it; tell "
            "the mirror's owner, who should push the revision again (or under a new revision); "
            "`modelhaul cache verify` checks the copy already on this machine",
        )


class SourceChanged(IntegrityError):
    """The local file changed while it was being uploaded."""


class DiskFull(ModelhaulError, OSError):
    """The local disk has no room (or a file-size limit was hit)."""

    def __init__(self, path: str, needed: int | None = None, *, hint: str | None = None) -> None:
        self.path = path
        self.needed = needed
        need = f" ({needed:,} bytes needed)" if needed is not None else ""
        super().__init__(
            f"no space left to write {path}{need}",
            hint=hint
            or "free some space on that disk (or raise the file-size limit), then run the "
            "same command again: finished parts are kept and only the rest is fetched",
        )


@dataclass(frozen=True)
class PartFailure:
    """One part of one object that failed after all its retries."""

    what: str
    part: int
    attempts: int
    cause: BaseException

    def __str__(self) -> str:
        return f"{self.what} part {self.part} after {self.attempts} attempts: {self.cause}"


class TransferFailed(ModelhaulError):
    """Some parts of a transfer failed after all retries.

    Attributes:
        failures: each failed part, with the object, the part number and the cause.
    """

    def __init__(self, failures: Sequence[PartFailure], *, hint: str = "") -> None:
        self.failures = list(failures)
        first = self.failures[0]
        self.retryable = all(getattr(f.cause, "retryable", False) for f in self.failures)
        lines = "\n".join(f"  - {f}" for f in self.failures[:10])
        more = f"\n  ... and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        super().__init__(
            f"{len(self.failures)} part(s) failed, first {first.what} part {first.part}:\n"
            f"{lines}{more}",
            hint=hint
            or "run the same command again: parts already done are kept and only the "
            "failed ones are sent",
        )


class TransferBusy(ModelhaulError):
    """Another process is already writing the same destination."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(
            message,
            hint=hint
            or "wait for the other process to finish, or stop it; then run the same command again",
        )


class Cancelled(ModelhaulError):
    """The command was cancelled (another file hit a fatal error, or Ctrl-C)."""

    def __init__(self, message: str = "the transfer was cancelled", *, hint: str = "") -> None:
        super().__init__(
            message,
            hint=hint
            or "run the same command again: finished parts are kept and "
            "only the rest is transferred",
        )


class RankFailed(ModelhaulError):
    """A load shared across the ranks of a ``torch.distributed`` process group stopped,
    because one rank failed (its reason is in the message) or left the group; every rank
    raises this with the same message.

    Attributes:
        rank: the rank that failed first, or None when the group itself broke (a rank
            died, or the group's timeout passed).
    """

    def __init__(self, message: str, *, rank: int | None = None, hint: str = "") -> None:
        self.rank = rank
        super().__init__(
            message,
            hint=hint
            or "fix what the failing rank reports (or why it died), then start the job again",
        )


class ServerStartError(ModelhaulError):
    """The embedded SeaweedFS server did not start."""


# -- model repositories, origin hubs and the cache ------------------------------------------


class InvalidRepoId(ConfigError):
    """A repository id that is not ``ORG/NAME`` (optionally ``@REVISION``)."""


class MissingExtra(ConfigError, ImportError):
    """An optional dependency is needed and not installed.

    Attributes:
        package: the package to install.
    """

    def __init__(
        self, package: str, purpose: str, extra: str | None = None, *, alternative: str = ""
    ) -> None:
        self.package = package
        install = f"pip install 'modelhaul[{extra}]'" if extra else f"pip install {package}"
        # The install command is in the message itself, not only in the hint: a pull that
        # tries several sources lists each one's message, and a line that says what is
        # missing without saying how to get it sends the reader to the docs.
        super().__init__(
            f"{purpose} needs the {package} package, which is not installed ({install})",
            hint=f"{install}, or {alternative}" if alternative else install,
        )


class UnsafeSymlink(UnsafePath):
    """A symlink inside a folder to push points outside the folder."""


class NoSuchModel(NotFound):
    """No source knows the repository.

    Attributes:
        repo: ``ORG/NAME``.
        tried: one line per source tried, saying what it answered.
    """

    def __init__(self, repo: str, tried: Sequence[str], *, hint: str = "") -> None:
        self.repo = repo
        self.tried = list(tried)
        lines = "".join(f"\n  - {t}" for t in self.tried)
        super().__init__(
            f"no source has a model named {repo}{lines}",
            hint=hint
            or "check the spelling of ORG/NAME, and that the mirror or hub is the "
            "one that holds it (`modelhaul ls` lists a mirror's models)",
        )


class NoSuchRevision(NotFound):
    """The repository exists, but not the revision or ref asked for.

    Attributes:
        repo: ``ORG/NAME``.
        revision: the revision or ref asked for.
        tried: one line per source tried, saying what it answered.
    """

    def __init__(self, repo: str, revision: str, tried: Sequence[str], *, hint: str = "") -> None:
        self.repo = repo
        self.revision = revision
        self.tried = list(tried)
        lines = "".join(f"\n  - {t}" for t in self.tried)
        super().__init__(
            f"{repo} has no revision or ref {revision!r}{lines}",
            hint=hint
            or f"list the revisions with `modelhaul ls {repo}`, or drop @{revision} "
            "to get the latest",
        )


class NotCached(NotFound):
    """Offline, and the cache does not hold what was asked for."""


class BadContent(IntegrityError):
    """A download that cannot be the file: empty, or an HTML error page, in place of weights."""


class ManifestError(IntegrityError):
    """A revision's manifest is not valid JSON, or not a valid manifest.

    Attributes:
        where: the manifest's location.
    """

    def __init__(self, where: str, problem: str, *, hint: str = "") -> None:
        self.where = where
        super().__init__(
            f"the manifest {where} is not valid: {problem}",
            hint=hint or "the revision is damaged; push it again, or pull another revision",
        )


class RevisionIdMismatch(IntegrityError):
    """A revision's manifest does not hash to the content id it was pinned by: it was
    rewritten after it was published (or the pin is wrong).

    Attributes:
        repo: ``ORG/NAME``.
        expected: the pinned id.
        actual: what the manifest hashes to.
        paths: the files whose entries differ from the pin, where that is known (a lock
            file records every file); empty otherwise.
    """

    def __init__(
        self, repo: str, *, expected: str, actual: str, where: str, paths: Sequence[str] = ()
    ) -> None:
        self.repo = repo
        self.expected = expected
        self.actual = actual
        self.paths = list(paths)
        files = f" ({', '.join(self.paths)} changed)" if self.paths else ""
        super().__init__(
            f"the manifest of {repo}@{expected} in {where} hashes to {actual}, not to the id it "
            f"is pinned by: it was rewritten after it was published{files}. Nothing was "
            "downloaded",
            hint="do not use this copy; tell the mirror's owner, who should push the revision "
            "again from a trusted folder",
        )


class SignatureError(IntegrityError):
    """A revision failed its signature check (``--require-signature``).

    Attributes:
        revision: ``ORG/NAME@ID``.
    """

    def __init__(self, revision: str, message: str, *, hint: str) -> None:
        self.revision = revision
        super().__init__(message, hint=hint)


class SignatureMissing(SignatureError):
    """The revision has no signature, and one is required."""


class SignatureRemoved(SignatureMissing):
    """The revision's manifest says it was signed, but the signature is gone."""


class SignatureInvalid(SignatureError):
    """The signature is not valid for the trusted public key (another key, or damaged)."""


class SignatureMismatch(SignatureError):
    """The revision's files are not the ones that were signed.

    Attributes:
        paths: the files that differ from, or are not covered by, the signature.
    """

    def __init__(self, revision: str, message: str, *, paths: Sequence[str], hint: str) -> None:
        self.paths = list(paths)
        super().__init__(revision, message, hint=hint)


class SourcesFailed(ModelhaulError):
    """No source could serve a pull.

    Attributes:
        tried: one line per source tried, saying why it failed.
        retryable: True only when every source failed in a way that trying again can
            help (a timeout, a 503); a missing model, a refused key or a missing package
            will fail the same way again.
    """

    def __init__(
        self, what: str, tried: Sequence[str], *, retryable: bool = False, hint: str = ""
    ) -> None:
        self.tried = list(tried)
        self.retryable = retryable
        lines = "".join(f"\n  - {t}" for t in self.tried)
        super().__init__(
            f"no source could serve {what}:{lines}",
            hint=hint
            or "fix the first source's problem (`modelhaul doctor` checks a store), "
            "or add another with --mirror / --origin; then run the same command again",
        )


class HubError(ModelhaulError):
    """An origin hub (Hugging Face, ModelScope) refused or failed a request.

    Attributes:
        hub: the hub's name and endpoint.
        status: the HTTP status, when the hub answered.
    """

    def __init__(
        self, message: str, *, hub: str, status: int | None = None, hint: str = ""
    ) -> None:
        self.hub = hub
        self.status = status
        self.retryable = status is None or status >= 500 or status == 429
        super().__init__(message, hint=hint)


class RevisionConflict(ModelhaulError):
    """A revision is already published with other content; revisions never change."""


class LockTimeout(ModelhaulError, TimeoutError):
    """A lock stayed held by a live holder for longer than the wait allowed.

    Attributes:
        what: what the lock protects.
        holder: who holds it (host, process, since when).
    """

    def __init__(self, what: str, holder: str, waited: float, *, hint: str = "") -> None:
        self.what = what
        self.holder = holder
        self.waited = waited
        super().__init__(
            f"{what} is locked by {holder}; gave up after waiting {waited:.0f}s",
            hint=hint
            or "that process is still working on it: wait for it and run the same "
            "command again, or stop it; a holder that died is detected and replaced by itself",
        )


class CacheError(ModelhaulError):
    """The local cache cannot be used (unwritable, damaged)."""


# -- checkpoints and weights (modelhaul.torch) ----------------------------------------------


class InvalidSafetensors(IntegrityError):
    """A file or object that should hold safetensors does not.

    Attributes:
        where: the file or object (``s3://bucket/key`` or a local path).
    """

    def __init__(self, where: str, problem: str, *, hint: str = "") -> None:
        self.where = where
        super().__init__(
            f"{where} is not a safetensors file: {problem}",
            hint=hint
            or "check that the location names a .safetensors file (a torch .pt/.bin "
            "checkpoint loads with modelhaul.torch.open and torch.load instead)",
        )


class TruncatedObject(IntegrityError):
    """An object or file is shorter than its own header or record says it is.

    Attributes:
        where: the file or object.
        size: the bytes it holds.
        expected: the bytes its header (or the record that names it) promises.
    """

    def __init__(self, where: str, *, size: int, expected: int, hint: str = "") -> None:
        self.where = where
        self.size = size
        self.expected = expected
        super().__init__(
            f"{where} holds {size:,} bytes, but {expected:,} were promised: it is truncated",
            hint=hint
            or "an upload of it was cut short or it was overwritten; upload it again, "
            "or load an earlier copy",
        )


_SECRET_PATTERNS = [
    re.compile(
        r"(?i)(aws_secret_access_key|secret_access_key|secret|password|token)"
        r"(\s*[=:]\s*)(\S+)"
    ),
    re.compile(r"(?i)(X-Amz-Security-Token=|X-Amz-Signature=|Signature=)([^&\s]+)"),
    # botocore's wire log prints headers as a dict: 'X-Amz-Security-Token': b'...'
    re.compile(r"(?i)(x-amz-security-token['\"]?\s*:\s*b?['\"])([^'\"]+)"),
    re.compile(r"(?i)(Credential=)([^/&\s]+)"),
]


# Secrets of every profile built in this process (see ``Profile.__post_init__``): a profile
# may come from a config file or ``--profile`` deep inside a command, where the CLI's log
# filter, set up before any profile exists, cannot see it. Only the CLI's filter and error
# printer read this; :func:`redact` itself scrubs only what it is given.
_known_secrets: set[str] = set()
_known_lock = threading.Lock()


def remember_secrets(*values: str | None) -> None:
    """Note values that the CLI's output must never show."""
    with _known_lock:
        _known_secrets.update(v for v in values if v and len(v) >= 4)


def known_secrets() -> list[str]:
    """Every secret noted by :func:`remember_secrets`, longest first."""
    with _known_lock:
        return sorted(_known_secrets, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """Return ``text`` with known secrets and secret-looking fields replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(
            lambda m: m.group(1) + (m.group(2) if m.lastindex == 3 else "") + "***", text
        )
    return text
