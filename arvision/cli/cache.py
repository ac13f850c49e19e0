"""``arvision data cache-targets``: run a recipe's tokenizer once over K views per image."""

from pathlib import Path

import typer

from .options import Overrides, RecipePath


def cache_targets(
    recipe: Path = RecipePath,
    out: Path = typer.Argument(..., help="LMDB directory to write (e.g. targets.lmdb).",
                               show_default=False),
    views: int = typer.Option(4, "--views", "-k", min=1, help="Augmented views per image."),
    seed: int = typer.Option(0, help="Seed of the views (a function of seed, view and image)."),
    batch_size: int = typer.Option(64, min=1, help="Images per tokenizer forward."),
    overrides: list[str] = Overrides,
) -> None:
    """Cache the tokenizer's outputs for K fixed augmented views of every image of RECIPE's data.

    Stores each view's crop and its tokens (ids as int32, features as float16) with a manifest;
    train on it with data.targets = "OUT" (no teacher runs then). A cache is refused by a recipe
    whose tokenizer, student size, view settings or data differ.
    """
    from rich.progress import Progress

    from ..plugins import get_plugins
    from ..pretrain import write_target_cache
    from ..recipe import load_recipe

    loaded = load_recipe(recipe, overrides, plugins=get_plugins())
    with Progress(transient=True) as progress:
        task = progress.add_task("caching targets", total=None)
        manifest = write_target_cache(
            loaded, out, views, seed, batch_size, str(recipe),
            progress=lambda done, total: progress.update(task, completed=done, total=total))
    spec = manifest["spec"]
    kind = "ids" if spec["discrete"] else "features"
    typer.echo(f"wrote {out}: {manifest['images']} images x {views} views of {kind} "
               f"{spec['grid'][0]}x{spec['grid'][1]}x{spec['dim']}{' + CLS' if spec['cls'] else ''}")
