"""CRC32C, computed as bytes flow and combined across parts without re-reading them.

CRC32C is what S3 stores as a full-object checksum for multipart uploads
(``ChecksumType=FULL_OBJECT``), and the awscrt implementation runs at memory speed
(~11 GB/s here, against ~1.4 GB/s for SHA-256), so verifying every byte costs little.
"""

from __future__ import annotations

import base64

from awscrt import checksums as _crt

__all__ = ["combine", "combine_segments", "completion", "crc32c", "crc32c_b64", "crc32c_hex"]


def crc32c(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``previous``."""
    return int(_crt.crc32c(data, previous))


def combine(first: int, second: int, second_length: int) -> int:
    """CRC32C of A+B from CRC32C(A), CRC32C(B) and len(B)."""
    return int(_crt.combine_crc32c(first, second, second_length))


def combine_segments(segments: list[tuple[int, int, int]]) -> int:
    """CRC32C of a whole file from ``(start, end, crc)`` segments that tile it in order."""
    total = 0
    for start, end, crc in segments:
        total = crc if start == 0 else combine(total, crc, end - start)
    return total


def completion(
    parts: dict[int, tuple[str, int, int]],
) -> tuple[list[tuple[int, str, int | None]], int]:
    """From ``{number: (etag, crc32c, length)}``, the ``(number, etag, crc32c)`` list that
    completes a multipart upload, in order, and the full-object CRC32C of the parts."""
    listed: list[tuple[int, str, int | None]] = []
    total = 0
    for number in sorted(parts):
        etag, crc, length = parts[number]
        total = crc if not listed else combine(total, crc, length)
        listed.append((number, etag, crc))
    return listed, total


def crc32c_hex(value: int) -> str:
    """A CRC32C as 8 hex digits, for messages and journals."""
    return f"{value:08x}"


def crc32c_b64(value: int) -> str:
    """A CRC32C as S3 writes it (base64 of 4 big-endian bytes)."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()
