"""Names of a package imported on first use (PEP 562), so that importing the package costs
only what its caller uses: ``import modelhaul`` does not load botocore, and
``import modelhaul.torch`` does not load Lightning or ``torch.distributed``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(
    package: str, namespace: MutableMapping[str, Any], table: Mapping[str, str]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: name ``n`` is imported from the module
    ``table[n]`` (relative to ``package``) when first asked for, and kept in ``namespace``
    (the package's ``globals()``) so later lookups are plain."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
