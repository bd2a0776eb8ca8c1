"""Downloads written with direct I/O (O_DIRECT): unaligned parts, tails and splits land
byte for byte, and a disk slower than the network hands over to the page cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import modelhaul
from modelhaul import TransferConfig
from modelhaul._transfer import download as _download
from tests.conftest import make_file

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux-only")


@pytest.mark.parametrize(
    ("size", "part"),
    [
        (1, 5 * MiB),
        (4095, 5 * MiB),
        (4096, 5 * MiB),
        (3 * 5 * MiB + 7, 5 * MiB),
        # Ranges that start off a 4 KiB boundary: each realigns, then writes direct.
        (4 * MiB + 3 * 1000 + 17, MiB + 1000),
    ],
)
def test_direct_download_is_byte_identical(
    tmp_path: Path, bucket: str, caplog: pytest.LogCaptureFixture, size: int, part: int
) -> None:
    src = make_file(tmp_path / "src.bin", size, seed=size)
    modelhaul.copy(src, f"s3://{bucket}/direct/{size}.bin")
    dest = tmp_path / "out.bin"
    config = TransferConfig(part_size=part, concurrency=4, chunk_size=MiB, direct_io=True)
    with caplog.at_level(logging.DEBUG, logger="modelhaul.download"):
        stats = modelhaul.copy(f"s3://{bucket}/direct/{size}.bin", dest, config=config)
    assert stats.bytes == size
    assert dest.read_bytes() == src.read_bytes()
    assert "direct write failed" not in caplog.text
    assert "no direct I/O" not in caplog.text
    assert not list(tmp_path.glob("*.modelhaul-partial*"))


def test_slow_disk_hands_over_to_the_page_cache(
    tmp_path: Path, bucket: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Judge after every MiB, and call any waiting too much: the first judgement switches.
    monkeypatch.setattr(_download, "DIRECT_PROBE", MiB)
    monkeypatch.setattr(_download, "DIRECT_MAX_SHARE", -1.0)
    src = make_file(tmp_path / "src.bin", 24 * MiB + 5, seed=3)
    modelhaul.copy(src, f"s3://{bucket}/direct/slow.bin")
    dest = tmp_path / "out.bin"
    config = TransferConfig(part_size=4 * MiB, concurrency=3, chunk_size=256 * 1024, direct_io=True)
    with caplog.at_level(logging.INFO, logger="modelhaul.download"):
        modelhaul.copy(f"s3://{bucket}/direct/slow.bin", dest, config=config)
    assert "writing through the page cache from here" in caplog.text
    assert dest.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("direct_io", [None, False])
def test_auto_is_direct_for_large_files_and_off_when_asked(
    tmp_path: Path,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    direct_io: bool | None,
) -> None:
    monkeypatch.setattr(_download, "DIRECT_PROBE", MiB)  # direct writes report every MiB
    src = make_file(tmp_path / "src.bin", 70 * MiB, seed=5)  # over the auto threshold
    modelhaul.copy(src, f"s3://{bucket}/direct/buffered.bin")
    dest = tmp_path / "out.bin"
    with caplog.at_level(logging.DEBUG, logger="modelhaul.download"):
        modelhaul.copy(
            f"s3://{bucket}/direct/buffered.bin", dest, config=TransferConfig(direct_io=direct_io)
        )
    assert ("time in direct writes" in caplog.text) == (direct_io is None)
    assert dest.read_bytes() == src.read_bytes()
