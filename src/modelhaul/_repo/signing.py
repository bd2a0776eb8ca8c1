"""Signing revisions with OpenSSF's ``model_signing``, and checking those signatures.

The signature is ``model_signing``'s own: a Sigstore bundle over an in-toto statement that
lists every file's SHA-256, signed with an elliptic-curve key pair (no transparency log is
needed, and none is reachable from a private network). It is made by ``model_signing``'s
public signing API over the pushed folder and stored beside the manifest
(``<id>/.modelhaul/model.sig``), so ``model_signing verify key --signature model.sig
--public_key key.pub FOLDER`` (or ``model_signing.verifying``) verifies a pulled folder
unchanged.

What the signature covers follows ``model_signing``'s rules: git metadata (``.git/``,
``.gitattributes``, ``.github/``, ``.gitignore``) is never part of a model's signature, and
``.modelhaul/`` (modelhaul's own records, where a folder keeps its signature) and any file of
the folder that the push left out are recorded as ignored paths. Every other file of the
revision must be in the signature with the manifest's SHA-256: a file changed, added or
removed after signing is refused. The content id still covers every file.

A pull checks the signature before it fetches a byte: the bundle's signature with the
trusted public key (``model_signing``'s key verifier, the one its public ``verifying`` API
uses), then the signed digests against the manifest; the files themselves are then checked
against the manifest's SHA-256 as they arrive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.errors import (
    ConfigError,
    LocalFileNotFound,
    MissingExtra,
    SignatureInvalid,
    SignatureMismatch,
    SignatureMissing,
    SignatureRemoved,
)
from .manifest import Manifest

__all__ = [
    "SignedFiles",
    "check_signature",
    "key_fingerprint",
    "read_signed_files",
    "sign_folder",
    "verify_folder",
]

# model_signing's hashing config leaves these out of every signature (ignore_git_paths).
_GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
_OWN_RECORDS = ".modelhaul"


def _require() -> Any:
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise MissingExtra("model-signing", "signing and verifying models", "sign") from exc
    return model_signing


def outside_signature(path: str) -> bool:
    """Whether ``model_signing`` leaves ``path`` out of a model's signature by its own rule."""
    top = path.split("/", 1)[0]
    return top in _GIT_PATHS or top == _OWN_RECORDS


def _read_key(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise LocalFileNotFound(
            f"cannot read the {what} {path}: {exc.strerror}",
            hint="give the path of a PEM file (model_signing's key signing takes an EC key: "
            "openssl ecparam -name prime256v1 -genkey -noout -out key.pem; "
            "openssl ec -in key.pem -pubout -out key.pub)",
        ) from exc


def key_fingerprint(public_key_pem: bytes) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo PEM: the key hint ``model_signing`` writes
    into its bundles, so the two name a key the same way.

    Raises:
        ConfigError: not a PEM public key (or a private key to take the public part of).
    """
    from cryptography.hazmat.primitives import serialization

    try:
        key: Any = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(public_key_pem, None).public_key()
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                "the key is not a PEM public or private key",
                hint="use the PEM files openssl writes (see `modelhaul push --help`)",
            ) from exc
    pem = key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return hashlib.sha256(pem).hexdigest()


@dataclass(frozen=True)
class SignedFiles:
    """What a signature covers.

    Attributes:
        digests: path -> SHA-256 of every signed file.
        ignored: the paths the signer recorded as left out.
        key_hint: the fingerprint of the key the bundle says it was signed with.
    """

    digests: Mapping[str, str]
    ignored: tuple[str, ...]
    key_hint: str


def _statement_files(statement: Mapping[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    predicate = statement["predicate"]
    serialization = predicate["serialization"]
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        raise ValueError(
            f"signed with {serialization.get('method')}/{serialization.get('hash_type')}, "
            "modelhaul compares per-file SHA-256 (model_signing's default)"
        )
    digests = {str(r["name"]): str(r["digest"]) for r in predicate["resources"]}
    ignored = tuple(str(p) for p in serialization.get("ignore_paths", ()))
    return digests, ignored


def read_signed_files(signature: bytes) -> SignedFiles:
    """The files a signature lists, read without checking who signed it (a push reads back
    what it just signed).

    Raises:
        SignatureInvalid: not a model_signing bundle of per-file SHA-256 digests.
    """
    try:
        bundle = json.loads(signature)
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        digests, ignored = _statement_files(statement)
        hint = str(bundle["verificationMaterial"]["publicKey"]["hint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid(
            "-", f"the signature is not a model_signing bundle ({exc})",
            hint="sign again with `modelhaul push --sign KEY`",
        ) from exc  # fmt: skip
    return SignedFiles(digests, ignored, hint)


def sign_folder(
    folder: Path, pushed: Iterable[str], private_key: str | Path, *, password: str | None = None
) -> bytes:
    """Sign the files ``pushed`` of ``folder`` with ``model_signing``'s public API; return the
    signature (a Sigstore bundle, JSON).

    ``model_signing`` hashes the folder itself (one more read of every file; about 0.7 s of
    CPU per GiB here). Files of the folder that are not pushed are recorded as ignored paths.

    Raises:
        MissingExtra: model-signing is not installed.
        LocalFileNotFound: the key cannot be read.
        ConfigError: the key is not an EC private key model_signing can sign with.
    """
    ms = _require()
    key_path = Path(private_key).expanduser()
    _read_key(key_path, "private key")
    keep = set(pushed)
    ignored = [_OWN_RECORDS]
    links = False
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for d in list(dirnames):
            rel = (base / d).relative_to(folder).as_posix()
            if rel in (_OWN_RECORDS, *_GIT_PATHS):
                dirnames.remove(d)
            elif (base / d).is_symlink():
                ignored.append(rel)  # push does not follow folder links; neither may this
                dirnames.remove(d)
        for name in filenames:
            rel = (base / name).relative_to(folder).as_posix()
            if rel in keep:
                links = links or (base / name).is_symlink()
            elif not outside_signature(rel):
                ignored.append(rel)
    hashing = (
        ms.hashing.Config()
        .set_ignored_paths(paths=ignored, ignore_git_paths=True)
        .set_allow_symlinks(links)
    )
    with tempfile.TemporaryDirectory(prefix="modelhaul-sign-") as tmp:
        out = Path(tmp) / "model.sig"
        try:
            config = ms.signing.Config().use_elliptic_key_signer(
                private_key=key_path, password=password
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{key_path} is not an EC private key model_signing can sign with ({exc})",
                hint="make one with: openssl ecparam -name prime256v1 -genkey -noout -out key.pem",
            ) from exc
        config.set_hashing_config(hashing).sign(folder, out)
        return out.read_bytes()


def _verify_bundle(signature: bytes, public_key: Path, revision: str) -> SignedFiles:
    """Check the bundle's signature with ``public_key`` and return what it covers."""
    _require()
    # The verifier behind model_signing.verifying.Config().use_elliptic_key_verifier: its
    # public API only verifies a folder on disk, and a pull must refuse a revision before a
    # byte of it is fetched.
    from cryptography.exceptions import InvalidSignature
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    try:
        verifier = sign_ec_key.Verifier(public_key)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{public_key} is not an EC public key model_signing can verify with ({exc})",
            hint="give the public half of the signing key (openssl ec -in key.pem -pubout)",
        ) from exc
    with tempfile.TemporaryDirectory(prefix="modelhaul-verify-") as tmp:
        path = Path(tmp) / "model.sig"
        path.write_bytes(signature)
        try:
            manifest = verifier.verify(sign_sigstore_pb.Signature.read(path))
        except (InvalidSignature, ValueError, KeyError, TypeError) as exc:
            detail = str(exc).strip() or type(exc).__name__
            raise SignatureInvalid(
                revision,
                f"the signature of {revision} does not verify with the public key "
                f"{public_key}: {detail}",
                hint="it was signed with another key, or the signature was replaced; do not "
                "use this revision unless you trust the key it was signed with",
            ) from exc
    digests = {rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    ignored = tuple(str(p) for p in manifest.serialization_type.get("ignore_paths", ()))
    return SignedFiles(digests, ignored, key_fingerprint(public_key.read_bytes()))


def check_signature(
    manifest: Manifest,
    signature: bytes | None,
    public_key: str | Path,
    *,
    revision: str,
) -> SignedFiles:
    """Refuse ``manifest`` unless ``signature`` is valid for ``public_key`` and covers
    exactly its files, with the same SHA-256.

    Args:
        manifest: the revision's manifest.
        signature: the stored signature, None if there is none.
        public_key: the trusted public key (PEM).
        revision: ``ORG/NAME@ID``, for messages. A partial pull is checked whole: every
            file of the manifest must be the signed one, whatever is fetched.

    Raises:
        SignatureMissing: there is no signature (``SignatureRemoved`` when the manifest
            says there was one).
        SignatureInvalid: the signature is not valid for the key.
        SignatureMismatch: a file differs from, or is not covered by, the signature.
        MissingExtra: model-signing is not installed.
    """
    key = Path(public_key).expanduser()
    _read_key(key, "public key")
    if signature is None:
        if manifest.signed_by:
            raise SignatureRemoved(
                revision,
                f"{revision} was signed when it was published (key {manifest.signed_by[:16]}"
                "…), but its signature is gone from the mirror: it was removed",
                hint="do not use this revision; tell the mirror's owner, who should sign it "
                "again (`modelhaul push --sign KEY`)",
            )
        raise SignatureMissing(
            revision,
            f"{revision} is not signed, and a signature by {key} is required",
            hint="ask its publisher to push it with `modelhaul push --sign KEY`, or pull "
            "without --require-signature if you trust the mirror",
        )
    signed = _verify_bundle(signature, key, revision)
    covered = {f.path: f.sha256 for f in manifest.files if not outside_signature(f.path)}
    changed = sorted(p for p, sha in covered.items() if signed.digests.get(p, sha) != sha)
    added = sorted(p for p in covered if p not in signed.digests)
    removed = sorted(p for p in signed.digests if p not in covered)
    if changed or added or removed:
        parts = []
        if changed:
            parts.append(f"changed since it was signed: {', '.join(changed)}")
        if added:
            parts.append(f"not covered by the signature: {', '.join(added)}")
        if removed:
            parts.append(f"signed but missing: {', '.join(removed)}")
        raise SignatureMismatch(
            revision,
            f"the files of {revision} are not the ones that were signed ({'; '.join(parts)})",
            paths=changed + added + removed,
            hint="the revision was altered after it was signed; do not use it, and tell the "
            "mirror's owner",
        )
    return signed


def verify_folder(folder: Path, signature: Path, public_key: str | Path) -> None:
    """Verify a folder with ``model_signing``'s own public verifier, as its users would.

    Raises:
        SignatureInvalid: the signature does not verify with the key.
        SignatureMismatch: the folder's files are not the signed ones.
        MissingExtra: model-signing is not installed.
    """
    ms = _require()
    key = Path(public_key).expanduser()
    _read_key(key, "public key")
    if not signature.is_file():
        raise SignatureMissing(
            str(folder),
            f"{signature} does not exist: {folder} has no signature to check",
            hint="give it with --signature, or pull the model with its signature",
        )
    config = ms.verifying.Config().use_elliptic_key_verifier(public_key=key)
    try:
        config.verify(folder, signature)
    except ValueError as exc:
        text = str(exc).strip()
        if text.startswith("Signature mismatch"):
            raise SignatureMismatch(
                str(folder), f"{folder} is not what was signed: {text}", paths=[],
                hint="a file was changed, added or removed after signing",
            ) from exc  # fmt: skip
        raise SignatureInvalid(
            str(folder), f"the signature {signature} does not verify with {key}: {text}",
            hint="it was signed with another key, or the signature was replaced",
        ) from exc  # fmt: skip
    except Exception as exc:  # model_signing raises cryptography's InvalidSignature too
        raise SignatureInvalid(
            str(folder),
            f"the signature {signature} does not verify with {key}: {type(exc).__name__}",
            hint="it was signed with another key, or the signature was replaced",
        ) from exc
