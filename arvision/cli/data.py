"""``arvision data``: pack image folders or Fashion-MNIST into LMDB, and inspect packs."""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from .cache import cache_targets

__all__ = ["data_app", "info", "pack"]


class _Progress:
    """A rich progress bar on a terminal, otherwise a plain line every 10 s (and at the end)."""

    def __init__(self, title: str) -> None:
        self.title, self.bar, self.task, self.last = title, None, None, 0.0
        self.first: int | None = None
        self.start = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True))

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task(self.title, total=total, completed=done)
            self.bar.update(self.task, completed=done)
            return
        now = time.monotonic()
        if self.first is None:
            self.first = done  # records already there (a resumed pack): not part of the rate
        if done and (now - self.last >= 10 or done == total):
            self.last = now
            rate = (done - self.first) / max(now - self.start, 1e-9)
            print(f"{self.title}: {done}/{total} images ({rate:.0f}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def pack(
    src: Path = typer.Argument(..., metavar="SRC", show_default=False,
                               help="Image folder tree (<class>/<image>), or the Fashion-MNIST "
                                    "directory with --source fashion_mnist."),
    out: Path = typer.Argument(..., metavar="OUT.lmdb", show_default=False,
                               help="Pack to write (a directory); an unfinished one is resumed."),
    source: str = typer.Option("imagefolder", help="'imagefolder' or 'fashion_mnist'."),
    split: str | None = typer.Option(None, help="Split: imagefolder reads SRC/SPLIT when that is a "
                                     "directory, else SRC itself; fashion_mnist: train or test."),
    short_side: int = typer.Option(256, min=1, help="Resize so the shorter side is this many pixels "
                                   "(aspect kept, never upscaled)."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG quality."),
    image_format: str | None = typer.Option(None, "--format", help="'jpeg' or 'png' (lossless); "
                                            "default: jpeg for imagefolder, png for fashion_mnist."),
    workers: int | None = typer.Option(None, min=1, help="Worker processes (default: one per core)."),
    limit: int | None = typer.Option(None, min=1, help="Pack only the first N images (tests, smoke "
                                     "runs); a later run without it extends the pack."),
    on_error: str = typer.Option("skip", help="A bad source image: 'skip' (warn, list it in the "
                                 "manifest) or 'raise' (stop, naming it)."),
) -> None:
    """Pack SRC into an LMDB pack of re-encoded images, labels and a manifest.

    Records are committed in batches; running the same command again after an interruption skips
    what is there and finishes the pack. The manifest is written last: a pack without one is
    incomplete, and readers refuse it.
    """
    from ..data.pack import PackOptions
    from ..data.pack import pack as run_pack
    from ..errors import DataError

    if image_format not in (None, "jpeg", "png"):
        raise DataError(f"--format: expected 'jpeg' or 'png', got {image_format!r}")
    if on_error not in ("skip", "raise"):
        raise DataError(f"--on-error: expected 'skip' or 'raise', got {on_error!r}")
    options = PackOptions(src=src, out=out, source=source, split=split, short_side=short_side,
                          quality=quality, image_format=image_format, workers=workers or os.cpu_count() or 1,
                          limit=limit,
                          on_error=on_error)
    progress = _Progress(f"packing {out.name}")
    try:
        manifest = run_pack(options, progress)
    finally:
        progress.close()
    typer.echo(f"{out}: {manifest['count']} images, {len(manifest['skipped'])} skipped, "
               f"{manifest['disk_bytes'] / 1e6:.1f} MB ({manifest['bytes_per_image']} bytes/image)")


def _summary(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    classes = manifest["classes"]
    shown = ", ".join(classes[:8]) + (f", ... ({len(classes)} in all)" if len(classes) > 8 else "")
    skipped = manifest["skipped"]
    rows = [
        ("source", f"{manifest['source']} {manifest['src']}"
                   + (f" (split {manifest['split']})" if manifest["split"] else "")),
        ("images", f"{manifest['count']} ({len(skipped)} skipped"
                   + (f", limit {manifest['limit']}" if manifest["limit"] else "") + ")"),
        ("classes", shown),
        ("encoding", f"{manifest['image_format']}"
                     + (f" quality {manifest['quality']}" if manifest["image_format"] == "jpeg" else "")
                     + f", shorter side {manifest['short_side']}, {manifest['channels']} channel(s)"),
        ("size", f"{manifest['disk_bytes'] / 1e6:.1f} MB ({manifest['bytes_per_image']} bytes/image)"),
        ("created", manifest["created"]),
        ("content sha256", manifest["content_sha256"]),
    ]
    rows += [("skipped", f"{item['name']}: {item['error']}") for item in skipped[:10]]
    return rows


def info(
    pack_path: Path = typer.Argument(..., metavar="PACK", show_default=False, help="LMDB pack."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every record against the "
                                "manifest's content hash (reads the whole pack)."),
) -> None:
    """Print a pack's manifest, after checking it against the content (cheaply, or fully with
    --verify)."""
    from ..data.pack_format import reader, validate
    from ..data.pack_format import verify as verify_pack

    env, _ = reader(pack_path)
    manifest = validate(env, pack_path)
    if verify:
        verify_pack(env, pack_path)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    width = max(len(name) for name, _ in _summary(manifest))
    for name, value in _summary(manifest):
        typer.echo(f"{name:<{width}}  {value}")
    if verify:
        typer.echo(f"{'verified':<{width}}  every record matches the content hash")


def data_app() -> typer.Typer:
    app = typer.Typer(help="Pack images into LMDB, inspect packs, cache teacher targets.",
                      no_args_is_help=True)
    app.command("pack")(pack)
    app.command("info")(info)
    app.command("cache-targets")(cache_targets)
    return app
