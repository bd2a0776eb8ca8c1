"""The one settings resolver. Every loader of modelhaul (profiles, pull/push settings,
``serve``, ``mirror sync``, the origin hubs) declares its settings here as
:class:`Setting` objects — the config-file key, the environment variables, the default
and the parser — and a :class:`Resolver` resolves each one, once, when the typed object
that holds it is built, with the precedence::

    explicit argument > environment variable(s) > config file table > (layers below) > default

"Layers below" are what a loader adds between the file and the default (a ``~/.aws``
profile, a provider preset, a value inherited from an enclosing table). Each value keeps
its :class:`Source`, so ``doctor`` and error messages can say where it came from.

The modelhaul config file is TOML at ``$MODELHAUL_CONFIG``, else
``$XDG_CONFIG_HOME/modelhaul/config.toml`` (``~/.config/modelhaul/config.toml``). It is
read once per resolution; an absent file is an empty one, and every table's keys are
checked against the settings that may appear in it. Nothing is read at import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError
from .units import parse_age, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

__all__ = [
    "ARGUMENT",
    "CONFIG_FILE_KEYS",
    "DEFAULT",
    "ConfigFile",
    "Resolved",
    "Resolver",
    "Setting",
    "Source",
    "as_bool",
    "as_count",
    "as_duration",
    "as_list",
    "as_path",
    "as_port",
    "as_size",
    "as_text",
    "as_url",
    "config_path",
    "one_of",
]

T = TypeVar("T")

# The top-level keys of the modelhaul config file: ``default_profile``, the
# ``[profiles.NAME]`` tables (modelhaul._core.config) and ``[repo]`` (modelhaul._repo).
CONFIG_FILE_KEYS = ("default_profile", "profiles", "repo", "serve")


@dataclass(frozen=True)
class Source:
    """Where a value came from.

    Attributes:
        kind: ``argument``, ``environment``, ``config file``, ``~/.aws``, ``preset``,
            ``inherited`` or ``default``.
        where: the variable, the file and table, or the preset's name.
    """

    kind: str
    where: str = ""

    @property
    def given(self) -> bool:
        """Whether the value came from the user rather than a built-in default."""
        return self.kind not in ("default", "preset")

    def __str__(self) -> str:
        if self.kind == "environment":
            return f"environment variable {self.where}"
        return f"{self.kind} {self.where}" if self.where else self.kind


ARGUMENT = Source("argument")
DEFAULT = Source("default")


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A setting's value and where it came from."""

    value: T
    source: Source


@dataclass(frozen=True, kw_only=True)
class Setting(Generic[T]):
    """One setting: its name, where it may come from, its default and its parser.

    Attributes:
        name: the argument's and the attribute's name.
        parse: turns a raw value (a string from the environment, a TOML value, or the
            argument) into the setting's type; raises :class:`ConfigError` when it cannot.
        default: the value when nothing else gives one.
        env: environment variables, the first one set wins.
        key: the config-file key (``name`` when empty); None for a setting no file holds.
        empty_env: whether a variable set to the empty string is a value (``""`` meaning
            "none", as in ``MODELHAUL_ORIGINS=``) rather than unset.
    """

    name: str
    parse: Callable[[Any], T]
    default: T
    env: tuple[str, ...] = ()
    key: str | None = ""
    empty_env: bool = False

    @property
    def file_key(self) -> str | None:
        return self.name if self.key == "" else self.key


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The modelhaul config file's location (it may not exist)."""
    env = os.environ if env is None else env
    if env.get("MODELHAUL_CONFIG"):
        return Path(env["MODELHAUL_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "modelhaul" / "config.toml"


@dataclass(frozen=True)
class ConfigFile:
    """A TOML config file, read once.

    Attributes:
        path: where it is (it may not exist: then ``data`` is empty).
        data: its top-level table.
    """

    path: Path
    data: Mapping[str, Any]

    @classmethod
    def read(cls, path: Path) -> ConfigFile:
        """Parse ``path``; an absent file is an empty config.

        Raises:
            ConfigError: the file is not valid TOML, or cannot be read.
        """
        try:
            with path.open("rb") as fh:
                return cls(path, tomllib.load(fh))
        except FileNotFoundError:
            return cls(path, {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid TOML: {exc}",
                hint="fix the file, or point MODELHAUL_CONFIG at another one",
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {path}: {exc.strerror or exc}",
                hint="make the file readable, or point MODELHAUL_CONFIG at another one",
            ) from exc

    @classmethod
    def modelhaul(
        cls, env: Mapping[str, str] | None = None, path: Path | None = None
    ) -> ConfigFile:
        """The modelhaul config file (``path``, else the default location), its top-level
        keys checked.

        Raises:
            ConfigError: not valid TOML, or a top-level key modelhaul does not know.
        """
        found = cls.read(path or config_path(env))
        found.check_keys(found.data, CONFIG_FILE_KEYS, f"config file {found.path}")
        return found

    def table(self, *names: str) -> Mapping[str, Any]:
        """The table at ``names`` (e.g. ``"profiles", "lab"``); empty when absent.

        Raises:
            ConfigError: the key holds something other than a table.
        """
        node: Mapping[str, Any] = self.data
        for i, name in enumerate(names):
            child = node.get(name, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{self.where(*names[: i + 1])} must be a table",
                    hint=f"write it as [{'.'.join(names[: i + 1])}] with keys below it",
                )
            node = child
        return node

    def where(self, *names: str) -> str:
        """``config file PATH [a.b]``, for messages."""
        table = f" [{'.'.join(names)}]" if names else ""
        return f"{self.path}{table}"

    @staticmethod
    def check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
        """Refuse a key of ``table`` that is not in ``valid``.

        Raises:
            ConfigError: naming the unknown keys and the valid ones.
        """
        known = set(valid)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys: {', '.join(unknown)}",
                hint=f"valid keys are {', '.join(sorted(known))}",
            )


class Resolver:
    """Resolves settings against the environment and one table of a config file.

    Args:
        settings: every setting the table may hold; its keys are checked against them.
        env: the environment to read (``os.environ`` if None).
        table: the config-file table; None (or empty) where no file holds these settings.
        where: the table's name in messages, e.g. ``/home/u/.config/modelhaul/config.toml
            [repo]``.
        others: keys of the table that other code reads (its sub-tables).

    Raises:
        ConfigError: the table holds a key that no setting has.
    """

    def __init__(
        self,
        settings: Sequence[Setting[Any]],
        *,
        env: Mapping[str, str] | None = None,
        table: Mapping[str, Any] | None = None,
        where: str = "",
        others: Iterable[str] = (),
    ) -> None:
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.table: Mapping[str, Any] = table or {}
        self.where = where
        keys = [*(s.file_key for s in settings if s.file_key is not None), *others]
        ConfigFile.check_keys(self.table, keys, f"config file {where}")
        self.sources: dict[str, Source] = {}

    def get(
        self,
        setting: Setting[T],
        explicit: Any = None,
        *,
        below: Sequence[Resolved[Any]] = (),
    ) -> Resolved[T]:
        """The value of ``setting``: ``explicit`` if not None, else the first environment
        variable set, else the table's key, else the first of ``below`` that is not None,
        else the default; parsed, and with its source.

        Raises:
            ConfigError: the value found cannot be parsed; the message says where it
                came from.
        """
        found = self._find(setting, explicit, below)
        if found is None:
            resolved: Resolved[T] = Resolved(setting.default, DEFAULT)
        else:
            raw, source = found
            resolved = Resolved(_parse(setting, raw, source), source)
        self.sources[setting.name] = resolved.source
        return resolved

    def _find(
        self, setting: Setting[Any], explicit: Any, below: Sequence[Resolved[Any]]
    ) -> tuple[Any, Source] | None:
        if explicit is not None:
            return explicit, ARGUMENT
        for name in setting.env:
            value = self.env.get(name)
            if value is not None and (value != "" or setting.empty_env):
                return value, Source("environment", name)
        key = setting.file_key
        if key is not None and key in self.table:
            return self.table[key], Source("config file", f"{self.where} {key}".strip())
        for layer in below:
            if layer.value is not None:
                return layer.value, layer.source
        return None


def _parse(setting: Setting[T], raw: Any, source: Source) -> T:
    what = setting.name if source.kind in ("argument", "default") else ""
    origin = f"{what} from {source}" if what else str(source)
    try:
        return setting.parse(raw)
    except ConfigError as exc:
        if type(exc) is not ConfigError:
            raise  # InvalidURI and friends say what they are already
        raise ConfigError(f"{origin}: {exc.message}", hint=exc.hint) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{origin}: {exc}", hint=f"see the documentation of {setting.name}"
        ) from None


# -- parsers ---------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def as_text(value: Any) -> str:
    """A string, as given."""
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not text", hint='write it in quotes, e.g. "value"')
    return value


def as_bool(value: Any) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{value!r} is not true or false", hint="write true or false (or 1 or 0)")


def as_size(value: Any) -> int:
    """Bytes: a whole number, or ``16MiB``, ``1.5GB``..."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        return parse_size(value)
    raise ConfigError(f"{value!r} is not a size", hint='write e.g. "500GB" or "16MiB"')


def as_duration(value: Any) -> float:
    """Seconds: a number, or ``90s``, ``30m``, ``12h``, ``7d``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        return parse_age(value)
    raise ConfigError(f"{value!r} is not a duration", hint="write seconds, or e.g. 90s, 30m, 12h")


def as_count(value: Any) -> int:
    """A whole number, 0 or more."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{value!r} is not a whole number >= 0", hint="write e.g. 3")


def as_port(value: Any) -> int:
    """A TCP port, 0 to 65535 (0: any free one)."""
    port = as_count(value)
    if port > 65535:
        raise ConfigError(f"{port} is not a port", hint="use a port from 1 to 65535")
    return port


def as_url(value: Any) -> str:
    """An ``http://`` or ``https://`` URL, without a trailing slash."""
    text = as_text(value).strip()
    if not text.startswith(("http://", "https://")):
        raise ConfigError(
            f"{text!r} is not an http:// or https:// URL",
            hint="write the URL with its scheme, e.g. http://127.0.0.1:8333",
        )
    return text.rstrip("/")


def as_path(value: Any) -> Path:
    """A local path; ``~`` is expanded."""
    if isinstance(value, Path):
        return value.expanduser()
    return Path(as_text(value)).expanduser()


def one_of(
    *choices: str, what: str = "value", aliases: Mapping[str, str] | None = None
) -> Callable[[Any], str]:
    """A parser for one of ``choices`` (or an alias of one)."""
    names = dict(aliases or {})

    def parse(value: Any) -> str:
        text = as_text(value).strip()
        text = names.get(text, text)
        if text not in choices:
            raise ConfigError(f"unknown {what} {value!r}", hint=f"use one of: {', '.join(choices)}")
        return text

    return parse


def as_list(item: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    """A parser for a list: a TOML array, or comma-separated text (the environment)."""

    def parse(value: Any) -> tuple[T, ...]:
        if isinstance(value, str):
            return tuple(item(part.strip()) for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            return tuple(item(v) for v in value)
        raise ConfigError(f"{value!r} is not a list", hint='write e.g. ["a", "b"]')

    return parse
