"""``modelhaul demo``: the whole round trip on the embedded store, in one command."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import click
from rich.console import Console

from .._core.config import MiB, load_profile
from .._repo.cache import sha256_file
from .._store.embedded import start_server, stop_server
from .._store.s3 import S3Store
from .._transfer.copy import copy
from .._transfer.engine import ProgressSubscriber
from .options import State, common_options, pass_state
from .progress import RichProgress

__all__ = ["demo_command", "run_demo"]


def _sample_model(root: Path, size_mib: int) -> dict[str, str]:
    """A folder shaped like a Hugging Face model: two weight shards and small JSON files."""
    root.mkdir(parents=True, exist_ok=True)
    shard = size_mib * MiB // 2
    files = {
        "config.json": json.dumps({"model_type": "demo", "hidden_size": 1024}).encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 4096}).encode(),
        "model.safetensors.index.json": json.dumps(
            {
                "weight_map": {
                    "a": "model-00001-of-00002.safetensors",
                    "b": "model-00002-of-00002.safetensors",
                }
            }
        ).encode(),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    for i in (1, 2):
        with (root / f"model-0000{i}-of-00002.safetensors").open("wb") as fh:
            left = shard
            while left:
                n = min(left, 8 * MiB)
                fh.write(os.urandom(n))
                left -= n
    return {p.name: sha256_file(p) for p in sorted(root.iterdir())}


def run_demo(
    console: Console, *, size_mib: int = 320, keep: bool = False, quiet: bool = False
) -> None:
    """Start SeaweedFS on loopback, upload and download a sample model, verify, stop."""
    work = Path(tempfile.mkdtemp(prefix="modelhaul-demo-"))

    def say(text: str) -> None:
        if not quiet:
            console.print(text)

    say(f"[bold]1/4[/] starting SeaweedFS in {work / 'server'} (127.0.0.1, a free port)")
    server = start_server(work / "server", buckets=["models"])
    try:
        env = server.env()
        profile = load_profile(env=env, config_file=Path(os.devnull))
        store = S3Store(profile)
        say(f"     endpoint {server.endpoint_url}")
        say(f"[bold]2/4[/] making a {size_mib} MiB sample model in {work / 'model'}")
        sums = _sample_model(work / "model", size_mib)
        results = []
        for step, (src, dst, what) in enumerate(
            [
                (str(work / "model"), "s3://models/demo/tiny-llm/", "upload"),
                ("s3://models/demo/tiny-llm/", str(work / "pulled"), "download"),
            ],
            start=3,
        ):
            say(f"[bold]{step}/4[/] {what}: {src} → {dst}")
            subs: list[ProgressSubscriber] = []
            bar = None
            if not quiet and console.is_terminal:
                bar = RichProgress(console, what)
                subs.append(bar)
            if bar is not None:
                with bar:
                    stats = copy(
                        src, dst, recursive=True, src_store=store, dst_store=store, progress=subs
                    )
            else:
                stats = copy(
                    src, dst, recursive=True, src_store=store, dst_store=store, progress=subs
                )
            results.append((what, stats))
            say(
                f"     {what}: {stats.files} files, {stats.bytes / MiB:.0f} MiB in "
                f"{stats.seconds:.2f}s = [bold]{stats.mb_per_s:.0f} MB/s[/]"
            )
        pulled = {p.name: sha256_file(p) for p in sorted((work / "pulled").iterdir())}
        if pulled != sums:
            raise SystemExit("demo failed: the downloaded files differ from the originals")
        say("[green]all files verified identical (sha256)[/]")
    finally:
        if keep:
            say(f"kept: server running ({server.endpoint_url}), files in {work}")
        else:
            stop_server(work / "server")
            shutil.rmtree(work, ignore_errors=True)
            say("server stopped, files removed")


@click.command("demo")
@click.option("--size-mib", default=320, show_default=True, help="Total size of the sample model.")
@click.option("--keep", is_flag=True, help="Leave the server and files in place.")
@common_options()
@pass_state
def demo_command(state: State, size_mib: int, keep: bool) -> None:
    """Start a local SeaweedFS, push and pull a sample model, print MB/s, stop it."""
    run_demo(state.console, size_mib=size_mib, keep=keep, quiet=state.quiet)
