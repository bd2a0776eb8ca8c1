"""``SourcesFailed`` is retryable only when every source's failure was."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import TransferConfig
from tests.hubfake import FakeHub

REPO = "acme/hubby"
CONFIG = TransferConfig(max_attempts=1, connect_timeout=1)


@pytest.fixture
def dead_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]  # bound, never listening: connections are refused


def test_every_source_unreachable_is_retryable(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, dead_port: int
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{dead_port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    with pytest.raises(modelhaul.SourcesFailed) as info:
        modelhaul.pull(REPO, cache_dir=tmp_path / "c", mirrors=["s3://some-bucket/m"],
                       origins=["hf"], config=CONFIG)  # fmt: skip
    assert "EndpointUnreachable" in info.value.tried[0]
    assert info.value.retryable


def test_a_source_that_lacks_the_model_makes_it_final(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, dead_port: int
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    with FakeHub() as hub:  # knows no model at all
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(modelhaul.SourcesFailed) as info:
            modelhaul.pull(REPO, cache_dir=tmp_path / "c", mirrors=["s3://some-bucket/m"],
                           origins=["hf"], config=CONFIG)  # fmt: skip
    assert "EndpointUnreachable" in info.value.tried[0]
    assert f"has no {REPO}" in info.value.tried[1]
    assert not info.value.retryable


def test_a_missing_package_is_not_retryable(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dev extra installs the SDK; a None in sys.modules makes ``import modelscope``
    # fail as it does where the package is not installed.
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(modelhaul.SourcesFailed) as info:
        modelhaul.pull(REPO, cache_dir=tmp_path / "c", origins=["modelscope"])
    assert "MissingExtra" in info.value.tried[0]
    assert not info.value.retryable


def test_built_without_causes_it_is_not_retryable() -> None:
    assert not modelhaul.SourcesFailed("acme/x", ["a mirror: something"]).retryable
    assert modelhaul.SourcesFailed("acme/x", ["a: timed out"], retryable=True).retryable
