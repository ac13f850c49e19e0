"""``arvision eval linear|knn|attentive|finetune CKPT``: evaluate a pretrained encoder."""

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from .options import Overrides

__all__ = ["eval_app"]

HELP = """Evaluate a checkpoint's encoder: linear probe, k-NN, attentive probe, full fine-tuning.

The probes read frozen features: the average-pooled, layer-normed patch tokens of the chosen
blocks (default: the middle block), computed with the attention --attention names (default: the
recipe's eval.attention, 'as_trained': bidirectional after prefix attention, else block-causal) on
the recipe's data (data.split to train, data.eval_split to score), plainly resized. They are
cached under RUN_DIR/features/, so a second probe reuses them. `finetune` trains the whole encoder
as a classifier. Results (accuracies in percent) are merged into RUN_DIR/eval.json, where RUN_DIR
is the checkpoint's directory."""

Checkpoint = typer.Argument(..., help="A checkpoint written by `arvision run` (OUT/checkpoint.pt).",
                            show_default=False, metavar="CKPT")
Blocks = typer.Option(None, "--blocks", "-b", metavar="N[,N...]", show_default=False,
                      help="1-based encoder blocks whose features are averaged (default: the "
                      "middle block, depth // 2).")
Limit = typer.Option(None, "--limit", min=1, help="Use the first N train images (smoke runs).")
EvalLimit = typer.Option(None, "--eval-limit", min=1, help="Score on the first N eval images.")
RandomInit = typer.Option(False, "--random-init", help="Probe the same encoder at the recipe's "
                          "seeded random initialisation instead of the trained weights (baseline; "
                          "stored under 'random_init' in eval.json).")
Device = typer.Option("auto", "--device", help="'auto', 'cpu', 'cuda' or 'cuda:N'.")
BatchSize = typer.Option(256, "--batch-size", min=1, help="Images per forward pass.")
AsJson = typer.Option(False, "--json", help="Print the results as JSON.")


class AttentionMode(StrEnum):
    bidirectional = "bidirectional"
    causal = "causal"
    as_trained = "as_trained"


Attention = typer.Option(None, "--attention", show_default=False,
                         help="How the encoder attends while features are extracted: "
                         "'bidirectional' (no mask), 'causal' (block-causal, raster order), "
                         "'as_trained' (default: the recipe's eval.attention).")
Out = typer.Option(None, "--out", "-o", help="Run directory for eval.json and the feature cache "
                   "(default: the checkpoint's directory).")


def _blocks(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        blocks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected block numbers like 2,3; got {text!r}",
                                 param_hint="--blocks") from None
    if not blocks:
        raise typer.BadParameter("expected at least one block number", param_hint="--blocks")
    return blocks


def _settings(probe: str, result: dict[str, Any]) -> str:
    if probe == "linear":
        return f"lr {result['lr']:g}, wd {result['weight_decay']:g} (held-out sweep)"
    if probe == "knn":
        return f"k {result['k']}, T {result['temperature']:g}"
    return f"{result['heads']} heads, {result['epochs']} epochs, lr {result['lr']:g}"


def _report(results: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    first = next(iter(results.values()))
    weights = "random init" if first["random_init"] else f"step {first['step']}"
    table = Table(title=f"{first['checkpoint']} ({weights}), blocks {first['blocks']}, "
                  f"{first['attention']} attention: "
                  f"{first['train_images']} {first['train_split']} -> {first['eval_images']} "
                  f"{first['eval_split']} images", title_justify="left")
    for column in ("probe", "top-1 %", "top-5 %", "settings", "seconds"):
        table.add_column(column, justify="right" if "%" in column or column == "seconds" else "left")
    for probe, result in results.items():
        top5 = f"{result['top5']:.2f}" if "top5" in result else "-"
        table.add_row(probe, f"{result['top1']:.2f}", top5, _settings(probe, result),
                      f"{result['probe_seconds']:.1f}")
    Console().print(table)


def _run(probe: str, checkpoint: Path, blocks: str | None, limit: int | None,
         eval_limit: int | None, random_init: bool, device: str, batch_size: int,
         out: Path | None, as_json: bool, attention: AttentionMode | None = None,
         **options: Any) -> None:
    from ..evaluate import run_probes  # heavy imports (torch, timm) only when a command runs

    def log(message: str) -> None:
        print(f"arvision: {message}", file=sys.stderr)

    results = run_probes(checkpoint, (probe,), blocks=_blocks(blocks), limit=limit,
                         eval_limit=eval_limit, random_init=random_init, device=device,
                         batch_size=batch_size, out_dir=out, log=log,
                         attention=attention.value if attention else None, **options)
    _report(results, as_json)


def linear(checkpoint: Path = Checkpoint, blocks: str | None = Blocks, limit: int | None = Limit,
           eval_limit: int | None = EvalLimit, random_init: bool = RandomInit,
           device: str = Device, batch_size: int = BatchSize, out: Path | None = Out,
           as_json: bool = AsJson, attention: AttentionMode | None = Attention) -> None:
    """Linear probe: a linear classifier on whitened pooled features.

    lr x weight decay (3x3 grid) is chosen by top-1 on a 10% held-out part of the train split;
    the probe is then retrained on all of it and scored on the eval split (top-1, top-5).
    """
    _run("linear", checkpoint, blocks, limit, eval_limit, random_init, device, batch_size, out,
         as_json, attention)


def knn(checkpoint: Path = Checkpoint, blocks: str | None = Blocks, limit: int | None = Limit,
        eval_limit: int | None = EvalLimit, random_init: bool = RandomInit,
        k: int = typer.Option(20, "--k", "-k", min=1, help="Neighbours that vote."),
        temperature: float = typer.Option(0.07, "--temperature", min=1e-6,
                                          help="Vote weight exp(cosine / T)."),
        device: str = Device, batch_size: int = BatchSize, out: Path | None = Out,
        as_json: bool = AsJson, attention: AttentionMode | None = Attention) -> None:
    """k-NN: cosine similarity of L2-normalised pooled features, weighted votes as in DINO."""
    _run("knn", checkpoint, blocks, limit, eval_limit, random_init, device, batch_size, out,
         as_json, attention, k=k, temperature=temperature)


def attentive(checkpoint: Path = Checkpoint, blocks: str | None = Blocks,
              limit: int | None = Limit, eval_limit: int | None = EvalLimit,
              random_init: bool = RandomInit,
              epochs: int = typer.Option(10, "--epochs", min=1, help="Training epochs."),
              lr: float = typer.Option(1e-2, "--lr", min=0.0, help="AdamW learning rate."),
              device: str = Device, batch_size: int = BatchSize, out: Path | None = Out,
              as_json: bool = AsJson, attention: AttentionMode | None = Attention) -> None:
    """Attentive probe (AIM): one learned query cross-attends over the frozen patch tokens.

    BatchNorm without affine on the tokens, multi-head cross-attention (the encoder's head
    count), a linear head; AdamW with a cosine schedule on cached token features. The tokens are
    those of the chosen blocks (--blocks: one block, or middle blocks averaged, as Toto probes).
    """
    _run("attentive", checkpoint, blocks, limit, eval_limit, random_init, device, batch_size, out,
         as_json, attention, attentive_epochs=epochs, attentive_lr=lr)


def finetune(checkpoint: Path = Checkpoint,
             recipe: Path | None = typer.Option(
                 None, "--recipe", "-r", help="A fine-tuning recipe (with a [finetune] table); its "
                 "finetune.checkpoint becomes CKPT. Default: the checkpoint's encoder and data with "
                 "the paper's protocol.", show_default=False),
             overrides: list[str] = Overrides,
             out: Path | None = typer.Option(
                 None, "--out", "-o", help="Fine-tuning run directory (default: "
                 "CKPT_DIR/finetune)."),
             as_json: bool = AsJson) -> None:
    """Full fine-tuning: the encoder as a timm classifier on the recipe's labelled data.

    Layer-wise lr decay, mixup / cutmix, RandAugment, random erasing, label smoothing, drop path,
    average pool + fc_norm (D-iGPT / BEiT protocol), on the training engine (resume, torchrun,
    bf16). Without --recipe: 100 epochs, warmup 5, blr 1e-4 x batch / 256, batch 1024, layer decay
    0.65 (shorten with --set train.epochs=N). Top-1 / top-5 on data.eval_split go to OUT/eval.json
    and, under 'finetune', to CKPT_DIR/eval.json; the classifier to OUT/classifier_timm.pt.
    """
    from ..evaluate.runner import write_results
    from ..finetune import finetune as run_finetune  # heavy imports only when a command runs
    from ..finetune import finetune_tables, structure_finetune_recipe
    from .run import report_finetune

    tables = finetune_tables(checkpoint, recipe, overrides)
    source = str(recipe or checkpoint)
    loaded = structure_finetune_recipe(tables, source)
    result = run_finetune(loaded, out or checkpoint.parent / "finetune", source)
    if result.scores is None:
        return
    write_results(checkpoint.parent / "eval.json", {"finetune": result.scores}, random_init=False)
    if as_json:
        typer.echo(json.dumps(result.scores, indent=2))
    else:
        report_finetune(result)


def eval_app() -> typer.Typer:
    app = typer.Typer(help=HELP, no_args_is_help=True)
    app.command("linear")(linear)
    app.command("knn")(knn)
    app.command("attentive")(attentive)
    app.command("finetune")(finetune)
    return app
