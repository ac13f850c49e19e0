"""``arvision tokenizer fit-palette``: fit iGPT's colour palette on a data set and save it."""

from pathlib import Path
from typing import Literal

import typer
from torchvision.transforms import v2

from arvision.data.loader import Transformed, build_dataset
from arvision.recipe import DataConfig

from .colour_palette import fit_palette, sample_pixels, save_palette

__all__ = ["fit_palette_command"]


def fit_palette_command(
    out: Path = typer.Argument(..., help="Palette file to write (JSON).", show_default=False),
    source: str = typer.Option("fashion_mnist", help="Data source: fashion_mnist or synthetic."),
    root: Path | None = typer.Option(None, help="Data directory (default: the source's)."),
    split: str = typer.Option("train", help="Split to sample pixels from."),
    colors: int = typer.Option(512, min=2, help="Palette size (iGPT: 512)."),
    size: int | None = typer.Option(None, min=1, help="Resize images to this side first, as the "
                                    "tokenizer will (tokenizer.size)."),
    pixels: int = typer.Option(1_000_000, min=1, help="Pixels sampled for k-means."),
    iterations: int = typer.Option(20, min=1, help="Lloyd iterations."),
    seed: int = typer.Option(0, help="Seed of the pixel sample and the k-means++ start."),
) -> None:
    """Fit a k-means colour palette over pixels in [-1, 1] and write it as OUT.

    Use the file as the palette tokenizer's 'path' with num_colors = --colors.
    """
    data = DataConfig(source=_source(source), root=str(root) if root else None, split=split)
    dataset = build_dataset(data)
    if size is not None:
        dataset = Transformed(dataset, v2.Resize((size, size), antialias=True))
    centres = fit_palette(sample_pixels(dataset, pixels, seed), colors, iterations, seed)
    save_palette(out, centres, {"source": source, "split": split, "size": size, "pixels": pixels,
                                "iterations": iterations, "seed": seed})
    typer.echo(f"wrote {out}: {centres.shape[0]} colours x {centres.shape[1]} channels")


def _source(name: str) -> Literal["fashion_mnist", "synthetic"]:
    if name not in ("fashion_mnist", "synthetic"):
        raise typer.BadParameter(f"expected fashion_mnist or synthetic, got {name!r}",
                                 param_hint="--source")
    return name  # type: ignore[return-value]
