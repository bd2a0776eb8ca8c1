"""A published revision whose object was replaced in the mirror: pull refuses it with
``RevisionTampered`` before a byte of it enters the cache, and never "restarts from the
new version"."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store
from modelhaul._repo.cache import Cache
from modelhaul._repo.manifest import RepoId
from tests.conftest import make_file, run_cli
from tests.test_repo import CONFIG, make_model, pull

PATH = "model-00002-of-00002.safetensors"


def _push_and_replace(tmp_path: Path, store: S3Store, bucket: str) -> tuple[str, str, str, str]:
    """Push acme/toy@v1, overwrite one object with other bytes of the same size; return
    the mirror, the revision's content id, the manifest's ETag and the store's."""
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG).revision
    key = f"m/acme/toy/{rev}/{PATH}"
    published = store.head(bucket, key).etag
    other = make_file(tmp_path / "other", (src / PATH).stat().st_size, seed=99).read_bytes()
    replaced = store.put(bucket, key, other)
    assert replaced != published
    return uri, rev, published, replaced


def _assert_nothing_of_it_cached(cache_dir: Path, tmp_path: Path) -> None:
    cache = Cache(cache_dir)
    for data in ((tmp_path / "src" / PATH).read_bytes(), (tmp_path / "other").read_bytes()):
        assert not cache.blob_path(hashlib.sha256(data).hexdigest()).exists()
    assert not list((cache_dir / "tmp").iterdir())
    assert not list(cache_dir.rglob("snapshots/*"))
    assert cache.load_manifest(RepoId("acme", "toy"), "v1") is None
    assert not list(cache_dir.rglob("manifest*.json"))


@pytest.mark.parametrize("checksums", ["on", "off"])  # off: no HEAD, the pinned GET fails
def test_pull_of_a_replaced_object_is_tampering(
    tmp_path: Path, store: S3Store, bucket: str, checksums: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, rev, published, replaced = _push_and_replace(tmp_path, store, bucket)
    monkeypatch.setenv("MODELHAUL_CHECKSUMS", "1" if checksums == "on" else "0")
    cache_dir = tmp_path / "cache"
    with pytest.raises(modelhaul.RevisionTampered) as info:
        pull("acme/toy@v1", cache_dir, uri)
    err = info.value
    assert isinstance(err, modelhaul.ChecksumMismatch) and not err.retryable
    assert (err.revision, err.path) == (f"acme/toy@{rev}", PATH)
    assert (err.expected, err.actual) == (published, replaced)
    for text in (f"acme/toy@{rev}", PATH, published, replaced, f"s3://{bucket}/m"):
        assert text in err.message
    assert "restarts" not in str(err)
    assert "push the revision again" in err.hint and "modelhaul cache verify" in err.hint
    _assert_nothing_of_it_cached(cache_dir, tmp_path)


def test_cli_names_the_tampering_with_a_hint(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri, rev, published, replaced = _push_and_replace(tmp_path, store, bucket)
    cache_dir = tmp_path / "cache"
    proc = run_cli("pull", "acme/toy@v1", "--mirror", uri, "--origin", "none",
                   "--cache-dir", str(cache_dir), env=env, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    first, hint = proc.stderr.strip().splitlines()[-2:]
    assert first.startswith("error: RevisionTampered: ")
    assert all(t in first for t in (f"acme/toy@{rev}", PATH, published, replaced))
    assert hint.startswith("  hint: ") and "modelhaul cache verify" in hint
    _assert_nothing_of_it_cached(cache_dir, tmp_path)
