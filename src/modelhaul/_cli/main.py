"""The ``modelhaul`` command: thin over the Python API.

The group and its entry point; each command lives in a module by role (``copy``, ``ls``,
``repo``, ``cache``, ``mirror``, ``serve``, ``server``, ``doctor``, ``demo``) and is added
here. The common options (``-q``, ``-v``, ``--json``, ``--profile``) work before and after
the command: see :mod:`.options`.

Errors print their message and a hint, never a traceback (``-vv`` logs one, redacted).
Exit codes: 0 done, 1 failed, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import gc
import logging
import sys

import click

from .. import __version__
from .._core.errors import ConfigError, ModelhaulError, redact
from .options import State, log_secrets
from .progress import setup_logging

__all__ = ["cli", "main"]

log = logging.getLogger("modelhaul.cli")

# botocore.httpsession imports urllib3's pyOpenSSL shim only to reach the standard
# library's SSLContext, which it falls back to when the shim is missing; where pyOpenSSL is
# installed (the [sign] extra) the shim loads pyOpenSSL and cryptography, ~50 ms of every
# command's start. Nothing in this process uses the shim (signing uses pyOpenSSL itself).
sys.modules.setdefault("urllib3.contrib.pyopenssl", None)  # type: ignore[arg-type]


# Each command's module, loaded when the command runs (or for --help): `modelhaul cp` does
# not import the cache, the mirror or the server, ~70 ms of every command's start.
COMMANDS = {
    "cp": "copy:cp_command",
    "ls": "ls:ls_command",
    "uploads": "copy:uploads_group",
    "pull": "repo:pull_command",
    "push": "repo:push_command",
    "cache": "cache:cache_group",
    "mirror": "mirror:mirror_group",
    "serve": "serve:serve_command",
    "server": "server:server_group",
    "doctor": "doctor:doctor_command",
    "demo": "demo:demo_command",
    "verify": "verify:verify_command",
    "lock": "verify:lock_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        import importlib

        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(f".{module}", __package__), attr)
        # The command's imports (botocore ...) live as long as the process: out of the
        # collector's reach, as main() does for what was loaded before.
        gc.freeze()
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging: -v info, -vv debug, -vvv wire.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages.")
@click.option(
    "--json", "as_json", is_flag=True, help="Machine output on stdout (commands that have it)."
)
@click.option("--profile", envvar="MODELHAUL_PROFILE", help="Profile to use.")
@click.version_option(__version__, prog_name="modelhaul")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, as_json: bool, profile: str | None) -> None:
    """Move model files between hubs, S3-compatible stores and machines.

    -q, -v, --json and --profile may also follow the command: `modelhaul cp -q A B`.
    """
    ctx.obj = State(verbose, quiet, as_json, profile)
    setup_logging(verbose, log_secrets())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning errors into a message, a hint and an exit code."""
    # The ~100k objects the imports made live as long as the process: moving them out of
    # the collector's reach keeps each collection cheap during a transfer.
    gc.freeze()
    try:
        cli.main(args=argv, prog_name="modelhaul", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Finished parts are journaled; a rerun picks up from there.
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ModelhaulError as exc:
        secrets = log_secrets()
        log.debug("failed", exc_info=True)
        click.echo(redact(f"error: {type(exc).__name__}: {exc.message}", secrets), err=True)
        if exc.hint:
            click.echo(redact(f"  hint: {exc.hint}", secrets), err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
