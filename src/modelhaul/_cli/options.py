"""What the commands share: the :class:`State` the common options fill, and the options
more than one command takes.

The common options ``-q/--quiet``, ``-v/--verbose``, ``--json`` and ``--profile`` are
accepted before the command (``modelhaul -q cp ...``) and after it (``modelhaul cp -q ...``,
as with ``aws s3 cp --quiet`` and ``hf download --quiet``), on every command, and mean the
same in both places:

* ``-v`` counts add up: ``modelhaul -v cp -v`` is ``-vv``.
* a value given after the command wins over one given before it: ``modelhaul --profile a
  cp --profile b`` uses ``b``, and either wins over ``MODELHAUL_PROFILE``. ``-q`` and
  ``--json`` are switches that only turn on, so either place turns them on.
* ``--json`` prints machine output on stdout where the command has it. A command with no
  JSON output refuses it (exit 2, "has no JSON output") rather than print text that a
  script would then try to parse; its ``--help`` does not list it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._core.config import TransferConfig
from .._core.errors import known_secrets
from .._core.units import parse_size
from .progress import setup_logging

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "State",
    "cache_dir_option",
    "common_options",
    "log_secrets",
    "pass_state",
    "transfer_config",
]

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """The common options, as merged from before and after the command.

    Attributes:
        verbose: the ``-v`` count.
        quiet: no progress bars or messages.
        as_json: machine output on stdout.
        profile_name: ``--profile`` (None: ``MODELHAUL_PROFILE`` or the default).
        console: where progress and messages go (stderr).
    """

    def __init__(
        self,
        verbose: int = 0,
        quiet: bool = False,
        as_json: bool = False,
        profile: str | None = None,
    ) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.as_json = as_json
        self.profile_name = profile
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        # Made on first use: rich costs ~40 ms of start-up that `-q` never needs.
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def show_progress(self) -> bool:
        """Whether to draw progress bars: a terminal, and neither quiet nor JSON."""
        return not self.quiet and not self.as_json and self.console.is_terminal


pass_state = click.make_pass_decorator(State, ensure=True)


def log_secrets() -> list[str | None]:
    """The secrets no log line or error message may show."""
    return [
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
        # The hubs' and the service's tokens, which reach modelhaul through the environment.
        os.environ.get("HF_TOKEN"),
        os.environ.get("MODELSCOPE_API_TOKEN"),
        os.environ.get("MODELHAUL_SERVE_TOKEN"),
        *known_secrets(),
    ]


def _more_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        state = ctx.ensure_object(State)
        state.verbose += value
        setup_logging(state.verbose, log_secrets())


def _quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).quiet = True


def _json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).as_json = True


def _no_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value or ctx.ensure_object(State).as_json:
        raise click.UsageError(f"`{ctx.command_path}` has no JSON output: leave out --json", ctx)


def _profile(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(State).profile_name = value


def common_options(
    *, json: str | None = None, quiet: str = "No progress bars or messages."
) -> Callable[[F], F]:
    """``-q``, ``-v``, ``--json`` and ``--profile`` after the command, merged into :class:`State`.

    Args:
        json: the help of ``--json``; None for a command with no JSON output, which then
            refuses ``--json`` in either place.
        quiet: the help of ``-q``, where quiet means more than silence.
    """

    def decorate(f: F) -> F:
        # Applied bottom-up: the last one here is listed first in --help.
        f = click.option(
            "--profile",
            "common_profile",
            expose_value=False,
            callback=_profile,
            help="Profile to use (wins over one given before the command).",
        )(f)
        f = click.option(
            "--json",
            "common_json",
            is_flag=True,
            expose_value=False,
            callback=_no_json if json is None else _json,
            hidden=json is None,
            help=json or "Refused: this command has no JSON output.",
        )(f)
        f = click.option(
            "-v",
            "--verbose",
            "common_verbose",
            count=True,
            expose_value=False,
            callback=_more_verbose,
            help="More logging (adds to -v before the command).",
        )(f)
        return click.option(
            "-q",
            "--quiet",
            "common_quiet",
            is_flag=True,
            expose_value=False,
            callback=_quiet,
            help=quiet,
        )(f)

    return decorate


cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    envvar="MODELHAUL_CACHE",
    help="The shared cache (default ~/.cache/modelhaul).",
)


def transfer_config(
    concurrency: int | None,
    part_size: str | None,
    bandwidth: str | None = None,
    stall_timeout: float | None = None,
    no_verify: bool = False,
    direct_io: bool | None = None,
) -> TransferConfig:
    """The :class:`TransferConfig` that the transfer options of a command ask for.

    Raises:
        ConfigError: a size or rate that does not parse.
    """
    kwargs: dict[str, Any] = {}
    if stall_timeout is not None:
        kwargs["stall_timeout"] = stall_timeout
    return TransferConfig(
        concurrency=concurrency,
        part_size=parse_size(part_size) if part_size else None,
        bandwidth_limit=parse_size(bandwidth) if bandwidth else None,
        verify=not no_verify,
        direct_io=direct_io,
        **kwargs,
    )
