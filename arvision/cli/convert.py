"""``arvision convert``: checkpoints of other code bases into arvision checkpoints."""

from pathlib import Path

import typer

from .options import Overrides

__all__ = ["convert_app", "digpt_official"]


def digpt_official(
    checkpoint: Path = typer.Argument(..., help="D-iGPT pretraining checkpoint (checkpoint-N.pth).",
                                      metavar="CKPT", show_default=False),
    out: Path = typer.Argument(..., help="arvision checkpoint to write.", metavar="OUT",
                             show_default=False),
    recipe: Path = typer.Option(..., "--recipe", "-r", show_default=False,
                                help="Recipe of the model the weights go into (its geometry is "
                                     "checked against the checkpoint)."),
    overrides: list[str] = Overrides,
) -> None:
    """Convert an official D-iGPT checkpoint (OliverRensu/D-iGPT, DiGPT_torch) to arvision.

    The recipe must describe the same model: 2x2 segments, encoder taps 6, 8, 10, 12, sin-cos
    positions, one transformer decoder predicting 'next' and one 'visible'. The result loads
    strictly into the recipe's model (step 0, the recipe stored with it).
    """
    from ..checkpoint import save_checkpoint  # heavy imports (torch, timm) only when run
    from ..convert import convert_digpt_official, load_digpt_official
    from ..plugins import get_plugins
    from ..recipe import load_recipe, recipe_to_dict

    loaded = load_recipe(recipe, overrides, plugins=get_plugins())
    state = convert_digpt_official(load_digpt_official(checkpoint), loaded, source=str(recipe),
                                   name=str(checkpoint))
    save_checkpoint(out, {"model": state, "step": 0, "recipe": recipe_to_dict(loaded)})
    count = sum(value.numel() for value in state.values())
    typer.echo(f"wrote {out}: {len(state)} tensors, {count:,} values")


def convert_app() -> typer.Typer:
    app = typer.Typer(help="Convert checkpoints of other code bases to arvision checkpoints.",
                      no_args_is_help=True)
    app.command("digpt-official")(digpt_official)
    return app
