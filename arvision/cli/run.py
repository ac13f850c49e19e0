"""``arvision run``: pretrain from a recipe."""

from pathlib import Path

import typer

from .options import Overrides, RecipePath


def run(
    recipe: Path = RecipePath,
    overrides: list[str] = Overrides,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: run.out_dir, else runs/<run.name>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Require a checkpoint in the output directory to continue from "
        "(a run continues from its newest checkpoint anyway)."),
) -> None:
    """Pretrain as RECIPE says; under torchrun, on every process it starts.

    Writes the resolved recipe (recipe.toml), metrics.jsonl, TensorBoard curves, step checkpoints
    (checkpoints/) and checkpoint.pt to the output directory. Run it again with the same output
    directory and it continues exactly where the newest checkpoint left off.
    """
    from ..checkpoint import saved_steps
    from ..errors import CheckpointError
    from ..recipe import load_recipe  # heavy imports (torch, timm) only when a command runs
    from ..train import train

    loaded = load_recipe(recipe, overrides)
    out_dir = out or Path(loaded.run.out_dir or Path("runs") / loaded.run.name)
    if resume and not saved_steps(out_dir / "checkpoints"):
        raise CheckpointError(f"{out_dir}: no checkpoint to resume from (checkpoints/step_*.pt)")
    result = train(loaded, out_dir, source=str(recipe))
    if not result.main:
        return
    if not result.losses:
        typer.echo(f"{out_dir} already finished {result.steps} steps; checkpoint {result.checkpoint}")
    else:
        first, last = result.losses[0], sum(result.losses[-10:]) / len(result.losses[-10:])
        typer.echo(f"trained to step {result.steps}: loss {first:.4f} -> {last:.4f} "
                   f"(mean of the last 10); checkpoint {result.checkpoint}")
    if loaded.eval is not None:
        from ..evaluate.report import evaluate_run, print_comparison

        print_comparison(evaluate_run(result.checkpoint, loaded.eval))
        typer.echo(f"results: {result.checkpoint.parent / 'results.json'}")
