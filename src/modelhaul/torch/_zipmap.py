"""Where the large records of a zip (a ``torch.save`` file) are, from its central directory.

``torch.load`` reads each tensor's storage with one ``readinto`` of exactly the record's
bytes. Knowing where the large records lie lets the reader leave their inside blocks out of
its read-ahead: they are fetched straight into the tensor when ``torch.load`` asks, in
parallel, with no copy through the cache. Anything that does not parse as a zip central
directory within the bytes given yields no records, and the reader reads ahead as usual.
"""

from __future__ import annotations

import struct

__all__ = ["inner_blocks", "zip_records"]

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_CENTRAL_FIXED = struct.Struct("<4sHHHHHHIIIHHHHHII")
# Local header (30 bytes), the name and the alignment padding come before the data.
HEADER_ALLOWANCE = 1024


def zip_records(tail: bytes | bytearray | memoryview, tail_offset: int) -> list[tuple[int, int]]:
    """``(local header offset, stored size)`` of every record whose central directory lies
    in ``tail`` (the file's bytes from ``tail_offset`` to its end); ``[]`` if none."""
    data = bytes(tail)
    try:
        return _parse(data, tail_offset)
    except (struct.error, ValueError):
        return []


def _parse(data: bytes, tail_offset: int) -> list[tuple[int, int]]:
    at = data.rfind(_EOCD)
    if at < 0:
        return []
    _, _, _, count, cd_size, cd_offset, _ = struct.unpack_from("<HHHHIIH", data, at + 4)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        loc = data.rfind(_ZIP64_LOCATOR, 0, at)
        if loc < 0:
            return []
        _, eocd64, _ = struct.unpack_from("<IQI", data, loc + 4)
        k = eocd64 - tail_offset
        if k < 0 or data[k : k + 4] != _ZIP64_EOCD:
            return []
        count, cd_size, cd_offset = struct.unpack_from("<QQQ", data, k + 32)
    p = cd_offset - tail_offset
    if p < 0:
        return []
    records = []
    for _ in range(count):
        fields = _CENTRAL_FIXED.unpack_from(data, p)
        if fields[0] != _CENTRAL:
            return []
        size, plain, name_len, extra_len, comment_len = (
            fields[8],
            fields[9],
            fields[10],
            fields[11],
            fields[12],
        )
        offset = fields[16]
        extra = data[p + 46 + name_len : p + 46 + name_len + extra_len]
        size, offset = _zip64(extra, plain, size, offset)
        records.append((offset, size))
        p += 46 + name_len + extra_len + comment_len
    return records


def _zip64(extra: bytes, plain: int, size: int, offset: int) -> tuple[int, int]:
    """Apply a zip64 extra field: 64-bit values for the fields set to 0xFFFFFFFF."""
    q = 0
    while q + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, q)
        if tag == 0x0001:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, q + 4))
            if plain == 0xFFFFFFFF and values:
                values.pop(0)
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
        q += 4 + length
    return size, offset


def inner_blocks(records: list[tuple[int, int]], block_size: int) -> set[int]:
    """Indexes of the blocks that lie wholly inside one record's data."""
    inner: set[int] = set()
    for offset, size in records:
        lo, hi = offset + HEADER_ALLOWANCE, offset + size
        first, last = -(-lo // block_size), hi // block_size - 1
        inner.update(range(first, last + 1))
    return inner
