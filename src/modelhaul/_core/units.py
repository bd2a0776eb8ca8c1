"""Sizes and durations as people write them (``16MiB``, ``1.5GB``, ``7d``) and as they read
them (``1.5 MiB``): one parser and one printer for the CLI, the config files and the pages.
"""

from __future__ import annotations

import re

from .errors import ConfigError

__all__ = ["format_duration", "format_size", "parse_age", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """``16MiB``, ``64M``, ``1.5GB``, ``4096`` -> bytes.

    Raises:
        ConfigError: not a size.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*?)(?:/s)?\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{text!r} is not a size", hint="write e.g. 16MiB, 64M or 1GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_age(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``90`` (seconds) -> seconds.

    Raises:
        ConfigError: not a duration.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*", text)
    if not m:
        raise ConfigError(f"{text!r} is not a duration", hint="write e.g. 90s, 30m, 12h, 7d")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * scale


def format_size(n: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_duration(seconds: float) -> str:
    """Seconds for people: ``45 s``, ``60 min``, ``2.5 h``, ``3.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
