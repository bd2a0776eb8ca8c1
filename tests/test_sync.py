"""``modelhaul mirror sync``: a config of repos kept in step with a (fake) hub, in a real
SeaweedFS bucket: incremental, idempotent, refs, retention, colder storage, two at once."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._mirror.config import load_sync_config
from modelhaul._mirror.sync import SyncReport, sync_mirror
from modelhaul._repo.manifest import RepoId
from modelhaul._repo.mirror import Mirror
from tests.conftest import make_file, run_cli
from tests.hubfake import FakeHub
from tests.servefixture import shared_bucket

MiB = 1024 * 1024
REPO = "acme/synced"


def files_v(tmp: Path, version: int) -> dict[str, bytes]:
    weights = make_file(tmp / "w.bin", 3 * MiB + 11, seed=3).read_bytes()
    return {
        "config.json": b'{"version": %d}' % version,
        "model.safetensors": weights,  # unchanged across versions
        "extra.bin": b"x" * 2000,  # excluded by the config
        "tokenizer/vocab.txt": b"tok\n" * (300 + version),
    }


def write_config(tmp: Path, uri: str, origin: str, **top: object) -> Path:
    lines = [f'mirror = "{uri}"', f'origin = "{origin}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += ["", "[[repos]]", f'id = "{REPO}"', 'revisions = ["main"]', 'exclude = ["*.bin"]']
    path = tmp / "mirror.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def bucket(store: S3Store) -> str:
    return shared_bucket(store, "sync")


@pytest.fixture
def hub(env: dict[str, str]) -> FakeHub:
    with FakeHub() as fake:
        yield fake  # type: ignore[misc]


def actions(report: SyncReport) -> list[tuple[str, str]]:
    return [(a.action, a.revision) for a in report.actions]


def test_sync_incremental_refs_retention_cold(
    tmp_path: Path, hub: FakeHub, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/{tmp_path.name}"
    cfg = write_config(tmp_path, uri, hub.url, keep=2, cold_after=1,
                       cold_storage_class="STANDARD_IA")  # fmt: skip
    config = load_sync_config(cfg)
    mirror = Mirror.from_uri(store, uri)
    rid = RepoId("acme", "synced")
    v1 = hub.add(REPO, files_v(tmp_path, 1))

    # Through the CLI: published, with a report.
    out = run_cli("mirror", "sync", str(cfg), "--json", env=env)
    first = json.loads(out.stdout)
    assert [(a["action"], a["revision"]) for a in first["actions"]] == [("published", v1.commit)]
    assert first["actions"][0]["origin_bytes"] == first["bytes_moved"] // 2 > 3 * MiB
    manifest, _ = mirror.resolve(rid, "main")
    # Published under its content id; the hub's commit is its name.
    assert manifest is not None and manifest.source["revision"] == v1.commit
    assert mirror.name(rid, v1.commit) == manifest.revision == manifest.content_id()
    id1 = manifest.revision
    assert {f.path for f in manifest.files} == {"config.json", "model.safetensors",
                                                "tokenizer/vocab.txt"}  # fmt: skip
    downloads = hub.downloads()

    # Again: nothing moves.
    again = sync_mirror(config, store=store, env=env)
    assert actions(again) == [("unchanged", v1.commit)] and again.bytes_moved == 0
    assert hub.downloads() == downloads

    # A new revision at the origin: only changed files come from the hub; main moves.
    v1_prefix = f"{tmp_path.name}/{REPO}/{id1}/"
    client = store.client(bucket)
    weights_key = v1_prefix + "model.safetensors"
    before = client.head_object(Bucket=bucket, Key=weights_key, ChecksumMode="ENABLED")
    v2 = hub.add(REPO, files_v(tmp_path, 2))
    # Copies above 1 MiB go in parts (UploadPartCopy): the path objects over 5 GiB take.
    third = sync_mirror(config, store=store, env=env,
                        transfer=TransferConfig(copy_threshold=MiB))  # fmt: skip
    assert ("published", v2.commit) in actions(third)
    (pub,) = [a for a in third.actions if a.action == "published"]
    assert pub.reused_bytes == 3 * MiB + 11  # the unchanged weights, read from the mirror
    assert 0 < pub.origin_bytes < 10_000
    assert hub.downloads() == downloads + 2 and hub.downloads("model.safetensors") == 1
    id2 = mirror.name(rid, v2.commit)
    assert id2 is not None and mirror.ref(rid, "main") == id2
    # The older revision is kept (keep = 2) and moves to the colder class: each file copied
    # onto itself server-side (with explicit metadata, which SeaweedFS needs to take a
    # self-copy that changes only the class), CRC32C and user metadata kept; the manifest
    # records the new ETags (the weights' changed: a single PUT copied in parts).
    cold = [(a.action, a.detail) for a in third.actions if a.revision == v1.commit]
    assert cold == [("cold", "STANDARD_IA")], third.actions
    v1_keys = [info.key for info in store.list(bucket, v1_prefix)]
    assert f"{v1_prefix}.modelhaul/storage-class" in v1_keys
    after = client.head_object(Bucket=bucket, Key=weights_key, ChecksumMode="ENABLED")
    assert after["StorageClass"] == "STANDARD_IA"
    assert after["ChecksumCRC32C"] == before["ChecksumCRC32C"]
    assert after["Metadata"] == before["Metadata"]
    assert after["ETag"] != before["ETag"] and after["ETag"].endswith('-1"')
    cooled = mirror.manifest(rid, id1)
    assert cooled is not None and cooled.content_id() == id1
    for entry in cooled.files:
        key = v1_prefix + entry.path
        head = client.head_object(Bucket=bucket, Key=key)
        assert entry.etag == head["ETag"], entry.path
        assert head["StorageClass"] == "STANDARD_IA", entry.path
    assert {e.path: e.part_size for e in cooled.files}["model.safetensors"] > 0
    # A store preset that checks ETags instead of CRC32C (checksums = false) pulls it.
    plain = dataclasses.replace(store.profile, checksums=False)
    got = modelhaul.pull(f"{REPO}@{id1}", cache_dir=tmp_path / "c-cold", mirrors=[uri],
                         origins=[], profile=plain)  # fmt: skip
    assert (got / "model.safetensors").read_bytes() == files_v(tmp_path, 1)["model.safetensors"]
    assert (got / "config.json").read_bytes() == b'{"version": 1}'
    # Again: already cold, nothing is copied.
    again = sync_mirror(config, store=store, env=env)
    assert [a for a in again.actions if a.action == "cold"] == []

    # A third revision: the oldest goes (keep = 2), manifest and objects.
    v3 = hub.add(REPO, files_v(tmp_path, 3))
    fourth = sync_mirror(config, store=store, env=env)
    assert ("published", v3.commit) in actions(fourth)
    assert ("pruned", v1.commit) in actions(fourth)
    assert mirror.manifest(rid, id1) is None and mirror.name(rid, v1.commit) is None
    assert not list(store.list(bucket, f"{tmp_path.name}/{REPO}/{id1}/"))
    id3 = mirror.name(rid, v3.commit)
    assert {r.revision for r in mirror.repos(rid)[0].revisions} == {id2, id3}
    # What pulls see is the newest, whole.
    folder = modelhaul.pull(REPO, cache_dir=tmp_path / "c", mirrors=[uri], origins=[])
    assert (folder / "config.json").read_bytes() == b'{"version": 3}'
    # The status record for serve's page.
    status = json.loads(store.get_bytes(bucket, f"{tmp_path.name}/.modelhaul/sync.json"))
    assert status["repos"][REPO]["refs"] == {"main": v3.commit}


def test_two_syncs_at_once_fetch_each_file_once(
    tmp_path: Path, hub: FakeHub, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/{tmp_path.name}"
    config = load_sync_config(write_config(tmp_path, uri, hub.url))
    v1 = hub.add(REPO, files_v(tmp_path, 1))
    reports: list[SyncReport] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(sync_mirror(config, store=store, env=env, lease_ttl=5))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(a.action for r in reports for a in r.actions) == ["published", "unchanged"]
    assert hub.downloads() == 3  # config.json, model.safetensors, vocab.txt: once each
    manifest = Mirror.from_uri(store, uri).lookup(RepoId("acme", "synced"), v1.commit).manifest
    assert manifest is not None and len(manifest.files) == 3


def test_sync_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('mirror = "s3://bkt/p"\n[[repos]]\nid = "not-a-repo"\n')
    with pytest.raises(modelhaul.InvalidRepoId):
        load_sync_config(bad)
    bad.write_text('mirror = "s3://bkt/p"\nkeep = -1\n[[repos]]\nid = "a/b"\n')
    with pytest.raises(modelhaul.ConfigError, match="keep"):
        load_sync_config(bad)
    bad.write_text('[[repos]]\nid = "a/b"\nrevison = ["main"]\n')
    with pytest.raises(modelhaul.ConfigError, match="no mirror"):
        load_sync_config(bad)
    with pytest.raises(modelhaul.ConfigError, match="unknown keys: revison"):
        load_sync_config(bad, mirror="s3://bkt/p")
    with pytest.raises(modelhaul.ConfigError, match="no sync config"):
        load_sync_config(tmp_path / "absent.toml")


def test_a_failing_repo_is_reported_and_the_rest_synced(
    tmp_path: Path, hub: FakeHub, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    uri = f"s3://{bucket}/{tmp_path.name}"
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'mirror = "{uri}"\norigin = "{hub.url}"\n[[repos]]\nid = "nobody/nothing"\n'
                   f'[[repos]]\nid = "{REPO}"\n')  # fmt: skip
    hub.add(REPO, {"config.json": b"{}"})
    proc = run_cli("mirror", "sync", str(cfg), env=env, check=False)
    assert proc.returncode == 1
    assert "failed           nobody/nothing main" in proc.stdout
    assert f"published        {REPO} main" in proc.stdout
