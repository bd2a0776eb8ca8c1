"""The one settings resolver and the loaders built on it (pull/push settings, serve, mirror
sync, the hubs): precedence explicit argument > environment > config file > default, where
each value came from, and a ConfigError naming the source of a bad value or the valid keys
of a table. Profiles: tests/test_profile_precedence.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelhaul
from modelhaul import ConfigError, load_serve_settings, load_sync_config
from modelhaul._core.settings import ConfigFile, Resolved, Resolver, Setting, Source, as_bool
from modelhaul._repo.hub import HuggingFaceHub, make_hub
from modelhaul._repo.settings import MirrorSpec, load_repo_settings

NO_FILE = Path(os.devnull)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- pull/push settings, serve, sync, hubs -----------------------------------------------------


def test_repo_settings_precedence(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "config.toml",
        '[repo]\nmirrors = ["s3://file/m", { uri = "s3://other/m", profile = "lab" }]\n'
        'origins = ["modelscope"]\ncache_dir = "/file/cache"\ncache_size = "2GB"\n'
        'write_back = true\nlock_timeout = "5m"\nverify = "sha256"\n',
    )
    s = load_repo_settings(env={"XDG_CACHE_HOME": "/xdg"}, config_file=cfg)
    assert s.mirrors == (MirrorSpec("s3://file/m"), MirrorSpec("s3://other/m", "lab"))
    assert (s.origins, s.cache_dir, s.cache_size) == (("modelscope",), Path("/file/cache"), 2e9)
    assert (s.write_back, s.lock_timeout, s.verify) == (True, 300.0, "sha256")
    env = {
        "MODELHAUL_MIRRORS": "s3://env/a, s3://env/b",
        "MODELHAUL_ORIGINS": "",  # set but empty: no origin at all
        "MODELHAUL_CACHE": "/env/cache",
        "MODELHAUL_WRITE_BACK": "0",
        "MODELHAUL_OFFLINE": "yes",
        "MODELHAUL_VERIFY": "crc32c",
    }
    s = load_repo_settings(env=env, config_file=cfg)
    assert s.mirrors == (MirrorSpec("s3://env/a"), MirrorSpec("s3://env/b"))
    assert (s.origins, s.cache_dir, s.write_back, s.offline, s.verify) == (
        (),
        Path("/env/cache"),
        False,
        True,
        "crc32c",
    )
    s = load_repo_settings(
        mirrors=["s3://arg/m"], origins=["hf"], cache_dir="/arg", offline=False, env=env,
        config_file=cfg,
    )  # fmt: skip
    assert (s.mirrors, s.origins, s.cache_dir, s.offline) == (
        (MirrorSpec("s3://arg/m"),),
        ("hf",),
        Path("/arg"),
        False,
    )
    s = load_repo_settings(env={"XDG_CACHE_HOME": "/xdg"}, config_file=NO_FILE)
    assert (s.mirrors, s.origins, s.cache_dir, s.lock_timeout) == (
        (),
        ("hf",),
        Path("/xdg/modelhaul"),
        1800.0,
    )


def test_repo_settings_refuse_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable MODELHAUL_OFFLINE: 'sometimes'"):
        load_repo_settings(env={"MODELHAUL_OFFLINE": "sometimes"}, config_file=NO_FILE)
    with pytest.raises(ConfigError, match="environment variable MODELHAUL_ORIGINS: unknown origin"):
        load_repo_settings(env={"MODELHAUL_ORIGINS": "hf,github"}, config_file=NO_FILE)
    cfg = write(tmp_path / "config.toml", '[repo]\ncache_size = "lots"\n')
    with pytest.raises(ConfigError, match=r"\[repo\] cache_size: 'lots' is not a size"):
        load_repo_settings(env={}, config_file=cfg)


def test_serve_settings_argument_beats_environment() -> None:
    env = {
        "MODELHAUL_SERVE_MIRROR": "s3://env/m",
        "MODELHAUL_SERVE_ORIGIN": "hf",
        "MODELHAUL_SERVE_PORT": "9001",
        "MODELHAUL_SERVE_TOKEN": "env-token-123",
        "HF_ENDPOINT": "http://hub.local:8080/",
        "HF_TOKEN": "hf-token-456",
    }
    s = load_serve_settings(env=env)
    assert (s.mirror, s.origin, s.port, s.host) == (
        "s3://env/m",
        "http://hub.local:8080",
        9001,
        "127.0.0.1",
    )
    assert (s.token, s.origin_token) == ("env-token-123", "hf-token-456")
    s = load_serve_settings(mirror="s3://arg/m", origin="none", port=7000, host="0.0.0.0", env=env)
    assert (s.mirror, s.origin, s.port, s.host) == ("s3://arg/m", None, 7000, "0.0.0.0")
    with pytest.raises(ConfigError, match="environment variable MODELHAUL_SERVE_PORT: 'http'"):
        load_serve_settings(env=dict(env, MODELHAUL_SERVE_PORT="http"))
    with pytest.raises(ConfigError, match="unknown origin 'gitlab'"):
        load_serve_settings(env=dict(env, MODELHAUL_SERVE_ORIGIN="gitlab"))
    with pytest.raises(ConfigError, match="serve needs a mirror"):
        load_serve_settings(env={})


def test_sync_repos_inherit_the_top_level(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "sync.toml",
        'mirror = "s3://bkt/m"\norigin = "modelscope"\nkeep = 2\ncold_after = 1\n'
        'cold_storage_class = "STANDARD_IA"\n'
        '[[repos]]\nid = "a/one"\n'
        '[[repos]]\nid = "a/two"\nkeep = 0\norigin = "hf"\nrevisions = "v1"\ninclude = ["*.json"]\n',
    )
    c = load_sync_config(cfg)
    assert (c.mirror, c.cold_after, c.cold_storage_class) == ("s3://bkt/m", 1, "STANDARD_IA")
    one, two = c.repos
    assert (one.origin, one.keep, one.revisions) == ("modelscope", 2, ("main",))
    assert (two.origin, two.keep, two.revisions, two.include) == ("hf", 0, ("v1",), ("*.json",))
    assert load_sync_config(cfg, mirror="s3://other/x").mirror == "s3://other/x"
    write(cfg, 'mirror = "s3://bkt/m"\n[[repos]]\nid = "a/b"\nkeep = "many"\n')
    with pytest.raises(ConfigError, match=r"\[repos\] a/b keep: 'many' is not a whole number"):
        load_sync_config(cfg)


def test_hubs_read_their_own_variables() -> None:
    hub = make_hub("hf", {"HF_ENDPOINT": "http://hub.local:1/", "HF_TOKEN": "t-0123"})
    assert isinstance(hub, HuggingFaceHub) and hub.endpoint == "http://hub.local:1"
    assert make_hub("hf", {}).describe() == "Hugging Face at https://huggingface.co"
    with pytest.raises(ConfigError, match=r"environment variable HF_ENDPOINT: 'hub\.local'"):
        make_hub("hf", {"HF_ENDPOINT": "hub.local"})
    with pytest.raises(ConfigError, match="unknown origin 'github'"):
        make_hub("github", {})


# -- the resolver itself -----------------------------------------------------------------------


def test_resolver_order_and_sources(tmp_path: Path) -> None:
    flag = Setting(name="flag", parse=as_bool, default=False, env=("A_FLAG", "B_FLAG"))
    file = ConfigFile.read(write(tmp_path / "c.toml", "[t]\nflag = true\n"))
    where = file.where("t")

    def resolve(env: dict[str, str], explicit: bool | None = None) -> Resolved[bool]:
        return Resolver([flag], env=env, table=file.table("t"), where=where).get(flag, explicit)

    assert resolve({"A_FLAG": "0", "B_FLAG": "1"}, explicit=True) == Resolved(
        True, Source("argument")
    )
    assert resolve({"A_FLAG": "", "B_FLAG": "off"}) == Resolved(
        False, Source("environment", "B_FLAG")
    )
    assert resolve({}) == Resolved(True, Source("config file", f"{where} flag"))
    empty = Resolver([flag], env={}, table=None)
    below = Resolved(True, Source("preset", "x"))
    assert empty.get(flag, below=[Resolved(None, Source("~/.aws")), below]) == below
    assert empty.get(flag) == Resolved(False, Source("default"))
    assert not Source("preset", "x").given and Source("~/.aws").given


def test_unknown_keys_of_a_table_name_the_valid_ones(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config.toml", '[repo]\ncache_sise = "1GB"\n')
    with pytest.raises(ConfigError, match=r"\[repo\] has unknown keys: cache_sise") as info:
        load_repo_settings(env={}, config_file=cfg)
    assert "cache_size" in info.value.hint and "write_back" in info.value.hint


def test_a_table_that_is_not_a_table(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config.toml", 'repo = "s3://x"\n')
    with pytest.raises(ConfigError, match=r"\[repo\] must be a table"):
        load_repo_settings(env={}, config_file=cfg)


def test_loaders_read_the_environment_when_called_not_when_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELHAUL_SERVE_MIRROR", "s3://late/m")
    assert modelhaul.load_serve_settings().mirror == "s3://late/m"
