"""``arvision tokenizer train-vqkd``: train a BEiT v2 VQ-KD tokenizer from a recipe (or, with
``--check``, validate the recipe and show what it builds)."""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from arvision.errors import RecipeError
from arvision.plugins import get_plugins
from arvision.recipe import read_recipe_data

from .vqkd_recipe import VQKDRecipe, is_vqkd, resolve_vqkd, structure_vqkd_recipe

__all__ = ["show_summary", "train_vqkd_command"]


def train_vqkd_command(
    recipe: Path = typer.Argument(..., metavar="RECIPE", show_default=False,
                                  help="VQ-KD recipe: a TOML file with a [vqkd] table."),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", metavar="KEY.PATH=VALUE", show_default=False,
        help="Override a recipe key; VALUE in TOML syntax (a bare word is a string). Repeatable."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: run.out_dir, else runs/<run.name>)."),
    check: bool = typer.Option(
        False, "--check", help="Validate RECIPE and print what it builds (on the meta device: no "
        "weights, no teacher loaded); train nothing."),
) -> None:
    """Train a BEiT v2 VQ-KD tokenizer: a ViT encoder, an L2-normalised codebook (k-means start,
    EMA updates) and a decoder that reconstructs a teacher's features.

    Writes what `arvision run` writes (recipe.toml, metrics.jsonl with codebook/used and
    codebook/perplexity, TensorBoard curves, checkpoints/, checkpoint.pt; run it again on the same
    directory and it resumes exactly), then OUT/vqkd.pth, the tokenizer, and OUT/tokenizer.toml,
    the [tokenizer] table that loads it in a pretraining recipe.
    """
    data = read_recipe_data(recipe, overrides)
    if not is_vqkd(data):
        raise RecipeError(f"{recipe}: not a VQ-KD recipe (expected a [vqkd] table; see "
                          "docs/tokenizers.md)")
    loaded = structure_vqkd_recipe(data, str(recipe), get_plugins())
    if check:
        show_summary(loaded, str(recipe))
        return
    from .vqkd_train import train_vqkd  # torch, timm and the data only when training

    out_dir = out or Path(loaded.run.out_dir or Path("runs") / loaded.run.name)
    result = train_vqkd(loaded, out_dir, source=str(recipe))
    if not result.train.main:
        return
    losses = result.train.losses
    if losses:
        last = sum(losses[-10:]) / len(losses[-10:])
        typer.echo(f"trained to step {result.train.steps}: loss {losses[0]:.4f} -> {last:.4f} "
                   f"(mean of the last 10); checkpoint {result.train.checkpoint}")
    else:
        typer.echo(f"{out_dir} already finished {result.train.steps} steps; checkpoint "
                   f"{result.train.checkpoint}")
    typer.echo(f"codebook: {result.used} of {loaded.vqkd.num_codes} codes used in the last "
               f"{loaded.vqkd.usage_window} batches")
    typer.echo(f"tokenizer: {result.tokenizer}; its [tokenizer] table: {out_dir / 'tokenizer.toml'}")


def show_summary(recipe: VQKDRecipe, source: str) -> None:
    """What a VQ-KD recipe builds, from its config alone."""
    from .vqkd_train import meta_parameters

    geometry = resolve_vqkd(recipe, source)
    enc, vq, image = recipe.encoder, recipe.vqkd, geometry.image
    grid = "x".join(map(str, geometry.grid))
    table = Table(title=f"{source}: OK (VQ-KD tokenizer)", show_header=False, title_justify="left")
    table.add_row("encoder", f"BEiT ViT: {enc.depth} blocks x {enc.embed_dim}, {enc.num_heads} "
                  f"heads, {image.size} px x {image.channels} ch, patch {image.patch_size} -> "
                  f"{grid} codes per image")
    restart = f"restart after {vq.dead_after} unused batches" if vq.dead_after else "no restart"
    start = f"k-means start ({vq.kmeans_iterations} iterations)" if vq.kmeans_init else \
        "random start"
    table.add_row("codebook", f"{vq.num_codes} x {vq.code_dim}, L2-normalised, EMA decay "
                  f"{vq.decay}, {start}, {restart}")
    table.add_row("decoder", f"{vq.decoder_depth} blocks x {geometry.decoder_dim}, "
                  f"{geometry.decoder_heads} heads -> {geometry.teacher.dim}-d features")
    teacher = vq.teacher
    table.add_row("teacher", f"{teacher.name}: features ({geometry.teacher.dim}) on {grid}, "
                  "cosine loss")
    params = meta_parameters(recipe, source)
    shown = ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in params.items() if count)
    table.add_row("parameters", f"{shown} (teacher not counted)")
    train = recipe.train
    length = f"{train.steps} steps" if train.steps else f"{train.epochs} epochs"
    table.add_row("schedule", f"{length} of {train.batch_size} images, base lr {train.base_lr}, "
                  f"{train.precision}")
    Console().print(table)
