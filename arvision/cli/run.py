"""``arvision run``: pretrain or fine-tune from a recipe."""

from pathlib import Path

import typer

from .options import Overrides, RecipePath, refuse_other_kind


def run(
    recipe: Path = RecipePath,
    overrides: list[str] = Overrides,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: run.out_dir, else runs/<run.name>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Require a checkpoint in the output directory to continue from "
        "(a run continues from its newest checkpoint anyway)."),
) -> None:
    """Pretrain (or fine-tune) as RECIPE says; under torchrun, on every process it starts.

    Writes the resolved recipe (recipe.toml), metrics.jsonl, TensorBoard curves (and MLflow or
    W&B runs: [log] trackers), step checkpoints (checkpoints/) and checkpoint.pt to the output
    directory. Run it again with the same output
    directory and it continues exactly where the newest checkpoint left off. A recipe with a
    [finetune] table fine-tunes a classifier instead, scores it on data.eval_split and writes
    eval.json and classifier_timm.pt (docs/evaluation.md).
    """
    from ..engine.checkpoints import saved_steps
    from ..errors import CheckpointError
    from ..finetune.recipe import is_finetune, structure_finetune_recipe
    from ..plugins import get_plugins
    from ..recipe import read_recipe_data, structure_recipe  # heavy imports only when run

    data = read_recipe_data(recipe, overrides)
    refuse_other_kind(data, recipe)
    finetuning = is_finetune(data)
    loaded = structure_finetune_recipe(data, str(recipe)) if finetuning else \
        structure_recipe(data, str(recipe), get_plugins())
    out_dir = out or Path(loaded.run.out_dir or Path("runs") / loaded.run.name)
    if resume and not saved_steps(out_dir / "checkpoints"):
        raise CheckpointError(f"{out_dir}: no checkpoint to resume from (checkpoints/step_*.pt)")
    if finetuning:
        from ..finetune.run import finetune

        report_finetune(finetune(loaded, out_dir, source=str(recipe)))
        return
    from ..engine import MetricLog, result_metrics
    from ..pretrain import train

    log = MetricLog(out_dir, loaded)  # its trackers stay open for the evaluation's results
    ok = False
    try:
        result = train(loaded, out_dir, source=str(recipe), log=log)
        if result.main:
            report_training(result)
        if result.main and loaded.eval is not None:
            from ..evaluate.report import evaluate_run, print_comparison

            summary = evaluate_run(result.checkpoint, loaded.eval)
            log.log_results(result_metrics(summary, "eval"))
            print_comparison(summary)
            typer.echo(f"results: {result.checkpoint.parent / 'results.json'}")
        ok = True
    finally:
        log.close(ok)


def report_training(result) -> None:
    """One line: how far the run got and how its loss moved."""
    if not result.losses:
        typer.echo(f"{result.out_dir} already finished {result.steps} steps; checkpoint "
                   f"{result.checkpoint}")
    else:
        first, last = result.losses[0], sum(result.losses[-10:]) / len(result.losses[-10:])
        typer.echo(f"trained to step {result.steps}: loss {first:.4f} -> {last:.4f} "
                   f"(mean of the last 10); checkpoint {result.checkpoint}")


def report_finetune(result) -> None:
    """The training line, then the scores of the fine-tuned classifier (rank 0)."""
    if result.scores is None:
        return
    report_training(result.train)
    scores = result.scores
    top5 = f", top-5 {scores['top5']:.2f}" if "top5" in scores else ""
    typer.echo(f"fine-tuned ({scores['init']}): top-1 {scores['top1']:.2f}{top5} on "
               f"{scores['eval_images']} {scores['eval_split']} images")
    if "ema" in scores:
        typer.echo(f"EMA weights: top-1 {scores['ema']['top1']:.2f}")
    typer.echo(f"results: {result.train.out_dir / 'eval.json'}; timm classifier: "
               f"{scores['classifier']}")
