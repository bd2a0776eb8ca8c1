"""``ViewBody``, the zero-copy request body, keeps the :class:`io.RawIOBase` contract."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from modelhaul._store.base import SEND_BLOCK, ViewBody

DATA = bytes(range(256)) * (3 * SEND_BLOCK // 256 + 7)  # three blocks and a bit


def test_read_zero_is_empty_and_moves_nothing() -> None:
    body = ViewBody(memoryview(DATA))
    assert body.read(10) == DATA[:SEND_BLOCK]
    assert bytes(body.read(0)) == b""
    assert body.tell() == SEND_BLOCK
    assert bytes(body.read(1)) == DATA[SEND_BLOCK : 2 * SEND_BLOCK]


def test_read_all_reads_to_the_end() -> None:
    for read_all in (lambda b: b.read(), lambda b: b.read(-1), lambda b: b.read(None)):
        body = ViewBody(memoryview(DATA))
        body.seek(5)
        rest = read_all(body)
        assert isinstance(rest, bytes) and rest == DATA[5:]
        assert body.tell() == len(DATA)
        assert bytes(body.read(-1)) == b"" and bytes(body.read(100)) == b""  # at the end
    body = ViewBody(memoryview(DATA))
    assert body.readall() == DATA
    # What a buffered reader over it returns (its read() relies on the raw readall).
    assert io.BufferedReader(ViewBody(memoryview(DATA))).read() == DATA


@given(st.lists(st.integers(min_value=-1, max_value=3 * SEND_BLOCK), max_size=12))
def test_any_reads_give_the_bytes_in_order(sizes: list[int]) -> None:
    body = ViewBody(memoryview(DATA))
    got = bytearray()
    for size in sizes:
        before = body.tell()
        block = bytes(body.read(size))
        if size == 0:
            assert block == b""
        elif size < 0:
            assert body.tell() == len(DATA)
        elif before < len(DATA):
            assert len(block) == min(max(size, SEND_BLOCK), len(DATA) - before)
        got += block
    got += body.readall()
    assert bytes(got) == DATA
