"""Part-size arithmetic: every object S3 allows (up to 50 TB) fits in at most 10,000 parts of
5 MiB to 5 GiB, whatever part size the user asked for; larger sizes are refused clearly."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modelhaul import ConfigError, TransferConfig
from modelhaul._core.config import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, upload_part_size

MiB = 1024 * 1024
TB = 10**12  # AWS's limit is 50 TB (decimal): 10,000 parts of 5 GiB hold 53.7 TB

asked = st.one_of(st.none(), st.integers(1, 8 * 1024**3))


@settings(max_examples=2000, deadline=None)
@given(size=st.integers(0, 50 * TB), part_size=asked)
@example(size=50 * TB, part_size=None)
@example(size=50 * TB, part_size=5 * MiB)
@example(size=MAX_PARTS * MAX_PART_SIZE, part_size=1)
@example(size=16 * 1024**3 + 1, part_size=None)
@example(size=1, part_size=8 * 1024**3)
def test_every_size_fits_in_10000_parts_within_the_limits(size: int, part_size: int | None) -> None:
    part = upload_part_size(size, TransferConfig(part_size=part_size))
    parts = max(1, -(-size // part))
    assert parts <= MAX_PARTS
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE
    if part_size is not None and MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        # a size the user chose is kept unless the object would need too many parts
        assert part == part_size or -(-size // part_size) > MAX_PARTS


@given(size=st.integers(MAX_PARTS * MAX_PART_SIZE + 1, 10**15))
def test_a_size_no_object_can_hold_is_refused(size: int) -> None:
    with pytest.raises(ConfigError, match="more than one S3 object can hold"):
        upload_part_size(size, TransferConfig())
