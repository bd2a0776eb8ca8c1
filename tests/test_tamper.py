"""Tamper-evident revisions: content-addressed ids, pinned pulls, lock files and
``model_signing`` signatures, against a real SeaweedFS and the real ``model_signing``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._repo.cache import Cache
from modelhaul._repo.lock import lock_models, pull_locked, read_lock, render_lock
from modelhaul._repo.manifest import RepoId, content_id
from modelhaul._repo.mirror import Mirror
from modelhaul._repo.settings import load_repo_settings
from tests.conftest import make_file, run_cli

ms = pytest.importorskip("model_signing")

MiB = 1024 * 1024
PART = 5 * MiB
CONFIG = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)
WEIGHTS = "model.safetensors"


def make_model(root: Path, seed: int = 0) -> Path:
    make_file(root / WEIGHTS, 2 * PART + 77, seed=seed)
    (root / "config.json").write_text(json.dumps({"model_type": "toy", "seed": seed}))
    make_file(root / "tokenizer" / "vocab.bin", 3000, seed=seed + 1)
    (root / "empty.txt").write_bytes(b"")
    return root


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pull(repo: str, cache: Path, mirror: str, **kw: object) -> Path:
    return modelhaul.pull(repo, cache_dir=cache, mirrors=[mirror], origins=[], config=CONFIG,
                          **kw)  # type: ignore[arg-type]  # fmt: skip


def cached_nothing(cache: Path) -> bool:
    """No blob, manifest, snapshot or download of any model is in the cache."""
    if not cache.exists():
        return True
    kept = [p for p in cache.rglob("*") if p.is_file() and "locks" not in p.parts]
    return kept == []


def keypair(folder: Path, name: str = "key") -> tuple[Path, Path]:
    """An EC P-256 key pair as PEM files, the kind model_signing's key signing takes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    folder.mkdir(parents=True, exist_ok=True)
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def manifest_key(rev: str, repo: str = "acme/toy") -> str:
    return f"m/{repo}/{rev}/.modelhaul/manifest.json"


# -- content ids ------------------------------------------------------------------------


def test_same_folder_from_two_machines_gets_the_same_id(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "host-a" / "model")
    b = tmp_path / "host-b" / "elsewhere"
    b.mkdir(parents=True)
    for rel in tree(a):
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_bytes((a / rel).read_bytes())
    for i, p in enumerate(sorted(b.rglob("*"))):
        os.utime(p, (1_000_000 + i, 1_000_000 + i))  # other mtimes than a's
    assert (a / WEIGHTS).stat().st_mtime != (b / WEIGHTS).stat().st_mtime

    first = modelhaul.push(a, uri, "acme/toy", source={"push": f"host-a:{a}"}, config=CONFIG)
    second = modelhaul.push(b, uri, "acme/toy", source={"push": f"host-b:{b}"}, config=CONFIG)
    assert first.revision == second.revision
    assert second.already_published and second.uploaded == 0
    manifest = json.loads(store.get_bytes(bucket, manifest_key(first.revision)))
    assert manifest["source"] == {"push": f"host-a:{a}"}  # the record, outside the id
    assert {k for k in manifest if k not in ("files", "version")} >= {"created", "source"}
    # Anyone can recompute the id from the folder alone.
    from modelhaul._repo.manifest import FileEntry

    mine = [FileEntry(rel, (b / rel).stat().st_size, sha) for rel, sha in tree(b).items()]
    assert content_id(mine) == first.revision


def test_a_name_maps_to_an_id_and_never_moves(tmp_path: Path, store: S3Store, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "a", seed=1)
    v1 = modelhaul.push(a, uri, "acme/toy", revision="v1", config=CONFIG).revision
    assert store.get_bytes(bucket, "m/acme/toy/.modelhaul/names/v1") == v1.encode()
    assert tree(pull("acme/toy@v1", tmp_path / "c", uri)) == tree(a)
    b = make_model(tmp_path / "b", seed=2)
    objects = {o.key for o in store.list(bucket, "m/")}
    with pytest.raises(modelhaul.RevisionConflict, match="already published") as info:
        modelhaul.push(b, uri, "acme/toy", revision="v1", config=CONFIG)
    assert v1 in str(info.value)
    assert {o.key for o in store.list(bucket, "m/")} == objects  # refused before a byte
    with pytest.raises(modelhaul.RevisionConflict, match="is a content id"):
        modelhaul.push(b, uri, "acme/toy", revision=v1, config=CONFIG)


def test_old_mirror_revisions_still_pull(tmp_path: Path, store: S3Store, bucket: str) -> None:
    """A mirror written before content ids: revisions under names, refs to names."""
    files = {"config.json": b'{"a": 1}', "w.bin": os.urandom(4096)}
    entries = []
    for rel, data in files.items():
        etag = store.put(bucket, f"m/acme/old/v1/{rel}", data)
        entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "etag": etag, "part_size": 0, "crc32c": ""})  # fmt: skip
    manifest = {"version": 1, "repo": "acme/old", "revision": "v1", "created": 1.0,
                "source": {"push": "h:/x"}, "files": entries}  # fmt: skip
    store.put(bucket, "m/acme/old/v1/.modelhaul/manifest.json", json.dumps(manifest).encode())
    store.put(bucket, "m/acme/old/refs/main", b"v1")
    uri = f"s3://{bucket}/m"
    folder = pull("acme/old", tmp_path / "c", uri)
    assert {p: (folder / p).read_bytes() for p in files} == files
    assert pull("acme/old@v1", tmp_path / "c2", uri).name == "v1"
    # The lock still pins it, by the id of its content.
    [locked] = lock_models(["acme/old"], settings=load_repo_settings(mirrors=[uri], origins=[]))
    assert locked.revision == "v1" and locked.id == content_id(
        modelhaul._repo.manifest.FileEntry(e["path"], e["size"], e["sha256"]) for e in entries
    )


# -- pinned pulls -------------------------------------------------------------------------


def _swap_object_and_rewrite_manifest(store: S3Store, bucket: str, rev: str) -> bytes:
    """What a bucket writer can do: new bytes, same size, and a manifest that agrees."""
    key = f"m/acme/toy/{rev}/{WEIGHTS}"
    size = store.head(bucket, key).size
    evil = os.urandom(size)
    store.put(bucket, key, evil)
    doc = json.loads(store.get_bytes(bucket, manifest_key(rev)))
    for f in doc["files"]:
        if f["path"] == WEIGHTS:
            from modelhaul._core.checksum import crc32c, crc32c_hex

            f["sha256"] = hashlib.sha256(evil).hexdigest()
            f["crc32c"] = crc32c_hex(crc32c(evil))
            f["etag"] = store.head(bucket, key).etag
    store.put(bucket, manifest_key(rev), json.dumps(doc).encode())
    return evil


def test_pinned_pull_refuses_a_swapped_object_with_a_rewritten_manifest(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, uri, "acme/toy", config=CONFIG).revision
    lock = tmp_path / "models.lock"
    lock.write_text(
        render_lock(lock_models(["acme/toy"], settings=load_repo_settings(mirrors=[uri])))
    )
    _swap_object_and_rewrite_manifest(store, bucket, rev)

    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.RevisionIdMismatch) as info:
        pull(f"acme/toy@{rev}", cache, uri)
    assert info.value.expected == rev and "rewritten" in str(info.value)
    assert cached_nothing(cache)
    # The lock records the files: the refusal names the one that changed.
    with pytest.raises(modelhaul.RevisionIdMismatch) as info:
        pull_locked(lock, cache_dir=cache, mirrors=[uri], origins=[], config=CONFIG)
    assert info.value.paths == [WEIGHTS] and WEIGHTS in str(info.value)
    assert cached_nothing(cache)
    proc = run_cli("pull", "--lock", str(lock), "--mirror", uri, "--cache-dir", str(cache),
                   env=env, check=False)  # fmt: skip
    assert proc.returncode == 1 and "RevisionIdMismatch" in proc.stderr
    assert WEIGHTS in proc.stderr and proc.stdout == ""
    assert cached_nothing(cache)
    # Not pinned: the directory's name is the id, so the rewrite is refused there too.
    with pytest.raises(modelhaul.RevisionIdMismatch):
        pull("acme/toy", cache, uri)
    assert cached_nothing(cache)


def test_pinned_pull_hashes_every_file_and_refuses_a_swapped_object(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    """Same size, and the manifest's ETag rewritten to the new object's (ETags are outside
    the content id, so the id still holds): only the bytes' hash can tell, and a pinned
    pull computes it."""
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, uri, "acme/toy", config=CONFIG).revision
    key = f"m/acme/toy/{rev}/tokenizer/vocab.bin"
    etag = store.put(bucket, key, os.urandom(store.head(bucket, key).size))
    doctored = json.loads(store.get_bytes(bucket, manifest_key(rev)))
    for entry in doctored["files"]:
        if entry["path"] == "tokenizer/vocab.bin":
            entry["etag"] = etag
    store.put(bucket, manifest_key(rev), json.dumps(doctored).encode())
    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.ChecksumMismatch) as info:
        pull(f"acme/toy@{rev}", cache, uri)
    assert "tokenizer/vocab.bin" in str(info.value)
    assert info.value.algorithm in ("sha256", "crc32c")
    c = Cache(cache)
    want = json.loads(store.get_bytes(bucket, manifest_key(rev)))
    bad = next(f for f in want["files"] if f["path"] == "tokenizer/vocab.bin")
    assert not c.blob_path(bad["sha256"]).exists()
    assert not list((cache / "repos").rglob("snapshots/*")) if (cache / "repos").exists() else True
    assert not (cache / "tmp").exists() or not [
        p for p in (cache / "tmp").iterdir() if p.name.startswith(bad["sha256"])
    ]


def test_pinned_pull_rehashes_blobs_an_unpinned_pull_trusted(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    """An unpinned pull names blobs by the manifest's word (CRC32C checked); a later pinned
    pull must not take that word for a SHA-256."""
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, uri, "acme/toy", config=CONFIG).revision
    cache = tmp_path / "cache"
    folder = pull("acme/toy", cache, uri)
    c = Cache(cache)
    sha = hashlib.sha256((src / "config.json").read_bytes()).hexdigest()
    record = json.loads((c.blob_path(sha).parent / f"{sha}.verified").read_text())
    assert record["hashed"] is False
    assert tree(pull(f"acme/toy@{rev}", cache, uri)) == tree(src)
    record = json.loads((c.blob_path(sha).parent / f"{sha}.verified").read_text())
    assert record["hashed"] is True
    assert folder == cache / "repos" / "acme" / "toy" / "snapshots" / rev


def test_lock_then_pull_lock_on_another_machine(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "a", seed=3)
    b = make_model(tmp_path / "b", seed=4)
    ra = modelhaul.push(a, uri, "acme/toy", revision="v1", config=CONFIG).revision
    rb = modelhaul.push(b, uri, "acme/other", config=CONFIG).revision
    proc = run_cli("lock", "acme/toy@v1", "acme/other", "--mirror", uri, env=env)
    lock = tmp_path / "models.lock"
    lock.write_text(proc.stdout)
    locked = read_lock(lock)
    assert [(m.repo, m.id, m.ref) for m in locked] == [("acme/toy", ra, "v1"),
                                                        ("acme/other", rb, "main")]  # fmt: skip
    assert {f.path for f in locked[0].files} == set(tree(a))
    # main moves on; the lock does not.
    modelhaul.push(a, uri, "acme/other", config=CONFIG)
    cache = tmp_path / "other-machine"
    proc = run_cli("pull", "--lock", str(lock), "--mirror", uri, "--cache-dir", str(cache),
                   env=env)  # fmt: skip
    paths = [Path(line) for line in proc.stdout.strip().splitlines()]
    assert [tree(p) for p in paths] == [tree(a), tree(b)]
    assert "pinned, checked by SHA-256" in proc.stderr


def test_pull_prints_the_id_it_resolved(tmp_path: Path, bucket: str, env: dict[str, str]) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG).revision
    proc = run_cli("pull", "acme/toy", "--mirror", uri, "--origin", "none", "--cache-dir",
                   str(tmp_path / "c"), env=env)  # fmt: skip
    assert f"acme/toy@main: revision {rev} (pin it with @ID)" in proc.stderr
    js = run_cli("pull", "acme/toy@v1", "--mirror", uri, "--origin", "none", "--json",
                 "--cache-dir", str(tmp_path / "c2"), env=env)  # fmt: skip
    events = [json.loads(line) for line in js.stdout.strip().splitlines()[:-1]]
    resolved = next(e for e in events if e["event"] == "resolved")
    assert resolved == {"event": "resolved", "repo": "acme/toy", "name": "v1",
                        "revision": rev, "id": rev, "pinned": False}  # fmt: skip


# -- signatures ---------------------------------------------------------------------------


@pytest.fixture
def signed(tmp_path: Path, store: S3Store, bucket: str) -> tuple[str, str, Path, Path, Path]:
    """A revision pushed with --sign: (uri, id, source folder, private key, public key)."""
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    private, public = keypair(tmp_path / "keys")
    result = modelhaul.push(src, uri, "acme/toy", sign=private, config=CONFIG)
    assert result.signed
    return uri, result.revision, src, private, public


def test_signed_revision_verifies_with_the_right_key_and_model_signing(
    tmp_path: Path, store: S3Store, bucket: str, signed: tuple[str, str, Path, Path, Path],
    env: dict[str, str],
) -> None:  # fmt: skip
    uri, rev, src, _, public = signed
    sig = store.get_bytes(bucket, f"m/acme/toy/{rev}/.modelhaul/model.sig")
    assert json.loads(sig)["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    cache = tmp_path / "cache"
    folder = pull("acme/toy", cache, uri, require_signature=public)
    assert tree(folder) == tree(src)
    cached_sig = Cache(cache).signature_path(RepoId("acme", "toy"), rev)
    assert cached_sig is not None and cached_sig.read_bytes() == sig
    # model_signing's own verifier, unchanged: its API and its command.
    ms.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(folder, cached_sig)
    proc = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(cached_sig),
         "--public_key", str(public), str(folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stderr
    # And modelhaul's own verify, of the cached revision and of the folder.
    out = run_cli("verify", f"acme/toy@{rev}", "--key", str(public), "--cache-dir", str(cache),
                  env=env)  # fmt: skip
    assert out.stdout.strip() == rev and "signature by" in out.stderr
    out = run_cli("verify", str(folder), "--key", str(public), "--signature", str(cached_sig),
                  env=env)  # fmt: skip
    assert out.stdout.strip() == rev


def test_signed_revision_refused_with_a_wrong_key(
    tmp_path: Path, signed: tuple[str, str, Path, Path, Path]
) -> None:
    uri, rev, _, _, _ = signed
    _, other = keypair(tmp_path / "keys", "other")
    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.SignatureInvalid) as info:
        pull("acme/toy", cache, uri, require_signature=other)
    assert type(info.value) is modelhaul.SignatureInvalid
    assert f"acme/toy@{rev}" in str(info.value) and str(other) in str(info.value)
    assert cached_nothing(cache)


def _republish(store: S3Store, bucket: str, uri: str, folder: Path, old: str) -> str:
    """An attacker with write access: push altered files as a new revision, copy the old
    signature beside it, and move main to it."""
    rev = modelhaul.push(folder, uri, "acme/toy", config=CONFIG).revision
    sig = store.get_bytes(bucket, f"m/acme/toy/{old}/.modelhaul/model.sig")
    store.put(bucket, f"m/acme/toy/{rev}/.modelhaul/model.sig", sig)
    return rev


def test_signed_revision_refused_when_a_file_is_altered(
    tmp_path: Path, store: S3Store, bucket: str, signed: tuple[str, str, Path, Path, Path]
) -> None:
    uri, rev, src, _, public = signed
    (src / "config.json").write_text('{"model_type": "evil"}')
    _republish(store, bucket, uri, src, rev)
    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.SignatureMismatch) as info:
        pull("acme/toy", cache, uri, require_signature=public)
    assert info.value.paths == ["config.json"]
    assert "changed since it was signed: config.json" in str(info.value)
    assert cached_nothing(cache)


def test_signed_revision_refused_when_a_file_is_added(
    tmp_path: Path, store: S3Store, bucket: str, signed: tuple[str, str, Path, Path, Path]
) -> None:
    uri, rev, src, _, public = signed
    (src / "extra.py").write_text("import os; os.system('curl evil')\n")
    _republish(store, bucket, uri, src, rev)
    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.SignatureMismatch) as info:
        pull("acme/toy", cache, uri, require_signature=public)
    assert info.value.paths == ["extra.py"]
    assert "not covered by the signature: extra.py" in str(info.value)
    assert cached_nothing(cache)


def test_signed_revision_refused_when_the_signature_is_removed(
    tmp_path: Path, store: S3Store, bucket: str, signed: tuple[str, str, Path, Path, Path],
    env: dict[str, str],
) -> None:  # fmt: skip
    uri, rev, _, _, public = signed
    store.delete(bucket, f"m/acme/toy/{rev}/.modelhaul/model.sig")
    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.SignatureRemoved, match="its signature is gone"):
        pull(f"acme/toy@{rev}", cache, uri, require_signature=public)
    assert cached_nothing(cache)
    proc = run_cli("pull", "acme/toy", "--mirror", uri, "--origin", "none", "--cache-dir",
                   str(cache), "--require-signature", str(public), env=env, check=False)  # fmt: skip
    assert proc.returncode == 1 and "SignatureRemoved" in proc.stderr and "hint:" in proc.stderr


def test_unsigned_revision_refused_by_the_org_config(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    modelhaul.push(src, uri, "acme/toy", config=CONFIG)
    modelhaul.push(src, uri, "other/toy", config=CONFIG)
    _, public = keypair(tmp_path / "keys")
    config = tmp_path / "config.toml"
    config.write_text(f'[repo]\nrequire_signature = {{ acme = "{public}" }}\n')
    settings = load_repo_settings(mirrors=[uri], origins=[], cache_dir=tmp_path / "c",
                                  config_file=config)  # fmt: skip
    with pytest.raises(modelhaul.SignatureMissing) as info:
        modelhaul.pull("acme/toy", settings=settings, config=CONFIG)
    assert type(info.value) is modelhaul.SignatureMissing and "is not signed" in str(info.value)
    assert cached_nothing(tmp_path / "c")
    # Another org is not bound by acme's key.
    assert tree(modelhaul.pull("other/toy", settings=settings, config=CONFIG)) == tree(src)


def test_verify_folder_and_cached_revision_catch_changes(
    tmp_path: Path, signed: tuple[str, str, Path, Path, Path], env: dict[str, str]
) -> None:
    uri, rev, src, _, public = signed
    cache = tmp_path / "cache"
    folder = pull(f"acme/toy@{rev}", cache, uri, require_signature=public)
    assert run_cli("verify", str(src), "--id", rev, env=env).stdout.strip() == rev
    (src / "added.txt").write_text("x")
    proc = run_cli("verify", str(src), "--id", rev, env=env, check=False)
    assert proc.returncode == 1 and "RevisionIdMismatch" in proc.stderr
    # A cached file changed in place (through its hard link).
    target = folder / "config.json"
    os.chmod(target, 0o644)
    target.write_text('{"model_type": "changed"}')
    proc = run_cli("verify", f"acme/toy@{rev}", "--cache-dir", str(cache), env=env, check=False)
    assert (
        proc.returncode == 1 and "ChecksumMismatch" in proc.stderr and "config.json" in proc.stderr
    )


def test_serve_hands_out_the_signature(
    tmp_path: Path, store: S3Store, bucket: str, signed: tuple[str, str, Path, Path, Path]
) -> None:
    pytest.importorskip("starlette")
    import urllib.request

    from tests.servefixture import running_serve

    uri, rev, _, _, _ = signed
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        with urllib.request.urlopen(f"{url}/acme/toy/resolve/main/.modelhaul/model.sig") as r:
            body = r.read()
        assert body == store.get_bytes(bucket, f"m/acme/toy/{rev}/.modelhaul/model.sig")
        unsigned = modelhaul.push(make_model(tmp_path / "u", seed=9), uri, "acme/plain",
                                  config=CONFIG)  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(
                f"{url}/acme/plain/resolve/{unsigned.revision}/.modelhaul/model.sig"
            )
        info.value.close()
        assert info.value.code == 404


def test_mirror_listing_keeps_names_apart_from_revisions(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    uri = f"s3://{bucket}/m"
    rev = modelhaul.push(make_model(tmp_path / "a"), uri, "acme/toy", revision="v1",
                         config=CONFIG).revision  # fmt: skip
    [summary] = Mirror.from_uri(store, uri).repos(RepoId("acme", "toy"))
    assert [r.revision for r in summary.revisions] == [rev]
    assert summary.revisions[0].names == ["v1"] and summary.refs == {"main": rev}
