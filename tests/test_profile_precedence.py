"""Profile precedence as the README states it: option > environment > modelhaul config
file > ``~/.aws`` profile > provider preset; ``AWS_PROFILE`` beats ``default_profile``, the
region of the chosen ``~/.aws`` profile beats the preset's, and a region counts as given
only when it came from the user. Each value says where it came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelhaul import ConfigError, load_profile

NO_FILE = Path(os.devnull)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def aws_config(tmp_path: Path) -> dict[str, str]:
    """A ~/.aws with two profiles that each name a region, and no credentials file."""
    config = write(
        tmp_path / "aws-config",
        "[default]\nregion = ap-south-1\n\n[profile team]\nregion = eu-west-3\n",
    )
    return {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent-credentials"),
    }


def test_aws_profile_beats_default_profile_of_the_config_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "config.toml",
        'default_profile = "lab"\n'
        '[profiles.lab]\nendpoint_url = "http://lab:9000"\n'
        '[profiles.team]\nendpoint_url = "http://team:9000"\n',
    )
    assert load_profile(env={}, config_file=cfg).name == "lab"
    p = load_profile(env={"AWS_PROFILE": "team"}, config_file=cfg)
    assert (p.name, p.endpoint_url) == ("team", "http://team:9000")
    assert p.sources["name"] == "environment variable AWS_PROFILE"
    # MODELHAUL_PROFILE is modelhaul's own and wins over AWS_PROFILE; the argument over both.
    env = {"AWS_PROFILE": "team", "MODELHAUL_PROFILE": "lab"}
    assert load_profile(env=env, config_file=cfg).name == "lab"
    assert load_profile("team", env=env, config_file=cfg).name == "team"


def test_region_of_the_chosen_aws_profile_beats_the_preset(
    aws_config: dict[str, str],
) -> None:
    p = load_profile("team", env=aws_config, config_file=NO_FILE)
    assert (p.aws_profile, p.region, p.region_given) == ("team", "eu-west-3", True)
    assert p.sources["region"].startswith("~/.aws ") and "[profile team]" in p.sources["region"]
    # No profile named: botocore's "default" profile, and its region.
    p = load_profile(env=aws_config, config_file=NO_FILE)
    assert (p.name, p.region, p.region_given) == ("default", "ap-south-1", True)


def test_region_precedence_argument_env_file_aws_preset(
    tmp_path: Path, aws_config: dict[str, str]
) -> None:
    cfg = write(tmp_path / "config.toml", '[profiles.team]\nregion = "us-west-1"\n')
    env = dict(aws_config, AWS_REGION="ca-central-1")
    assert load_profile("team", region="sa-east-1", env=env, config_file=cfg).region == "sa-east-1"
    p = load_profile("team", env=env, config_file=cfg)
    assert (p.region, p.sources["region"]) == ("ca-central-1", "environment variable AWS_REGION")
    p = load_profile("team", env=aws_config, config_file=cfg)
    assert p.region == "us-west-1"
    assert p.sources["region"] == f"config file {cfg} [profiles.team] region"
    p = load_profile("team", env=aws_config, config_file=NO_FILE)
    assert p.region == "eu-west-3"  # the ~/.aws profile's


def test_a_region_from_the_preset_is_not_given(aws_config: dict[str, str]) -> None:
    """Only a region the user chose counts as given: one a preset filled in may be corrected
    from the bucket's answer."""
    p = load_profile(provider="oss", env={}, config_file=NO_FILE)
    assert (p.region, p.region_given, p.sources["region"]) == ("cn-hangzhou", False, "preset oss")
    assert p.endpoint_url == "https://oss-cn-hangzhou.aliyuncs.com"
    assert p.sources["endpoint_url"] == "preset oss"
    # The preset's endpoint template takes the region from ~/.aws too.
    p = load_profile("team", provider="oss", env=aws_config, config_file=NO_FILE)
    assert p.endpoint_url == "https://oss-eu-west-3.aliyuncs.com" and p.region_given
    assert load_profile(env={"AWS_REGION": "eu-north-1"}, config_file=NO_FILE).region_given


def test_static_keys_keep_the_aws_profile_region_but_not_its_credentials(
    aws_config: dict[str, str],
) -> None:
    env = dict(aws_config, AWS_ACCESS_KEY_ID="AKENV", AWS_SECRET_ACCESS_KEY="env-secret")
    p = load_profile("team", env=env, config_file=NO_FILE)
    assert (p.aws_profile, p.access_key_id, p.region) == (None, "AKENV", "eu-west-3")


def test_a_profile_named_anywhere_must_exist(tmp_path: Path, aws_config: dict[str, str]) -> None:
    cfg = write(tmp_path / "config.toml", 'default_profile = "gone"\n[profiles.lab]\n')
    with pytest.raises(ConfigError, match=r"no profile named 'gone' \(from config file") as info:
        load_profile(env=aws_config, config_file=cfg)
    assert "known: lab" in info.value.message
    with pytest.raises(ConfigError, match="from environment variable AWS_PROFILE"):
        load_profile(env=dict(aws_config, AWS_PROFILE="nobody"), config_file=NO_FILE)


def test_bad_values_name_where_they_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable MODELHAUL_CHECKSUMS: 'maybe'"):
        load_profile(env={"MODELHAUL_CHECKSUMS": "maybe"}, config_file=NO_FILE)
    cfg = write(tmp_path / "config.toml", '[profiles.default]\naddressing_style = "dns"\n')
    with pytest.raises(ConfigError) as info:
        load_profile(env={}, config_file=cfg)
    assert info.value.message == (
        f"config file {cfg} [profiles.default] addressing_style: unknown addressing_style 'dns'"
    )
    assert info.value.hint == "use one of: path, virtual"


def test_unknown_keys_name_the_valid_ones(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config.toml", 'defualt_profile = "lab"\n')
    with pytest.raises(ConfigError, match="unknown keys: defualt_profile") as info:
        load_profile(env={}, config_file=cfg)
    assert info.value.hint == "valid keys are default_profile, profiles, repo, serve"
