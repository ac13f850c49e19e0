"""``arvision run``: pretrain from a recipe."""

from pathlib import Path

import typer

from .options import Overrides, RecipePath


def run(
    recipe: Path = RecipePath,
    overrides: list[str] = Overrides,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: run.out_dir, else runs/<run.name>)."),
) -> None:
    """Pretrain as RECIPE says.

    Writes the resolved recipe (recipe.toml), metrics.jsonl, TensorBoard curves and
    checkpoint.pt to the output directory.
    """
    from ..recipe import load_recipe  # heavy imports (torch, timm) only when a command runs
    from ..train import train

    loaded = load_recipe(recipe, overrides)
    out_dir = out or Path(loaded.run.out_dir or Path("runs") / loaded.run.name)
    result = train(loaded, out_dir, source=str(recipe))
    first, last = result.losses[0], sum(result.losses[-10:]) / len(result.losses[-10:])
    typer.echo(f"trained {result.steps} steps: loss {first:.4f} -> {last:.4f} "
               f"(mean of the last 10); checkpoint {result.checkpoint}")
