"""``arvision check``: validate a recipe and show what it builds, without allocating anything."""

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .options import Overrides, RecipePath, other_kind, other_kind_command


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".strip()


def check(
    ctx: typer.Context,
    recipe: Path = RecipePath,
    overrides: list[str] = Overrides,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate RECIPE and print the model it builds.

    Shows the token geometry (student grid, tokenizer grid, segments, encoder sequence, targets per
    decoder), parameter counts, FLOPs per image and the optimiser state size. The model is built
    on the meta device: no weights are downloaded and no memory is allocated. For a fine-tuning
    recipe ([finetune] table): the classifier, where it starts from, layer decay, augmentation and
    schedule. A recipe a plugin's command trains (a [vqkd] table: `arvision tokenizer train-vqkd`)
    is checked by that command's --check.
    """
    from ..build import resolve  # heavy imports (torch, timm) only when a command runs
    from ..errors import RecipeError
    from ..finetune.recipe import is_finetune
    from ..plugins import get_plugins
    from ..recipe import read_recipe_data, structure_recipe
    from ..summary import summarize

    data = read_recipe_data(recipe, overrides)
    table = other_kind(data)
    if table is not None:
        if as_json:
            raise RecipeError(f"{recipe}: --json: not available for a [{table}] recipe")
        command = other_kind_command(ctx, table, recipe)
        sets = [arg for assignment in overrides for arg in ("--set", assignment)]
        command.main([str(recipe), *sets, "--check"], prog_name=command.name,
                     standalone_mode=False)
        return
    if is_finetune(data):
        check_finetune(recipe, data, as_json)
        return
    summary = summarize(resolve(structure_recipe(data, str(recipe), get_plugins()), str(recipe)))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    enc, tok, order = summary["encoder"], summary["tokenizer"], summary["ordering"]
    table = Table(title=f"{recipe}: OK", show_header=False, title_justify="left")
    table.add_row("encoder", f"{enc['name']}: {enc['depth']} blocks x {enc['dim']}, "
                  f"{enc['img_size']} px, patch {enc['patch_size']}, stem {enc['stem']}, "
                  f"CLS {'yes' if enc['class_token'] else 'no'}, taps {enc['taps']}")
    grid = "x".join(map(str, summary["student_grid"]))
    table.add_row("student grid", f"{grid} tokens")
    table.add_row("tokenizer", f"{tok['name']}: {tok['kind']} ({tok['dim']}) on "
                  f"{'x'.join(map(str, tok['grid']))}{' + CLS' if tok['cls'] else ''}")
    table.add_row("ordering", f"{order['name']}: {order['segments']} segments "
                  f"({order['layout'][0]}x{order['layout'][1]}), "
                  f"{order['student_tokens_per_segment']} student / "
                  f"{order['target_tokens_per_segment']} target tokens each"
                  f"{', prefix attention' if order.get('prefix_attention') else ''}")
    table.add_row("encoder tokens", str(summary["encoder_tokens"]))
    table.add_row("targets", f"{summary['targets_per_decoder']} per decoder per image")
    for dec in summary["decoders"]:
        table.add_row("decoder", f"{dec['key']}: {dec['name']}, predicts {dec['predicts']}, "
                      f"weight {dec['weight']}")
    params = ", ".join(f"{key} {_si(value)}" for key, value in summary["parameters"].items())
    table.add_row("parameters", params)
    flops = summary["flops_per_image"]
    table.add_row("FLOPs / image", f"forward {_si(flops['forward'])}, train step "
                  f"{_si(flops['train_step'])} (student; tokenizer not counted)")
    table.add_row("train state", f"{_si(summary['train_state_bytes'], 'B')} (fp32 weights, grads, "
                  "AdamW moments)")
    table.add_row("precision", f"{summary['precision']} on this machine")
    memory = summary["memory"]
    if "error" in memory:
        table.add_row("peak memory", f"not estimated: {memory['error']}")
    else:
        fixed = memory["fixed_bytes"] + memory["state_bytes"]
        table.add_row("peak memory", f"about {_si(memory['peak_bytes'], 'B')} a process at "
                      f"micro-batch {memory['micro_batch']}: {_si(memory['per_image_bytes'], 'B')}"
                      f" of activations per image + {_si(fixed, 'B')} (estimated; teacher and "
                      "data loader not counted)")
    Console().print(table)


def check_finetune(recipe: Path, data: dict, as_json: bool) -> None:
    """Validate a fine-tuning recipe and print the classifier it trains."""
    from ..finetune.recipe import structure_finetune_recipe
    from ..finetune.summary import summarize_finetune

    summary = summarize_finetune(structure_finetune_recipe(data, str(recipe)), str(recipe))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{recipe}: OK (fine-tuning)", show_header=False, title_justify="left")
    enc = summary["encoder"]
    table.add_row("classifier", f"{enc['name']}: {enc['depth']} blocks x {enc['dim']}, "
                  f"{enc['img_size']} px, patch {enc['patch_size']}, pool {summary['pool']}, "
                  f"{summary['num_classes']} classes, drop path {summary['drop_path']}")
    table.add_row("starts from", summary["starts_from"])
    table.add_row("layer decay", summary["layer_decay"])
    table.add_row("augmentation", summary["augmentation"])
    table.add_row("parameters", _si(summary["parameters"]))
    flops = summary["flops_per_image"]
    table.add_row("FLOPs / image", f"forward {_si(flops['forward'])}, train step "
                  f"{_si(flops['train_step'])}")
    table.add_row("schedule", summary["schedule"])
    table.add_row("optimiser steps", str(summary["steps"] or "not counted (the train split is "
                                         "read only to count classes)"))
    Console().print(table)
