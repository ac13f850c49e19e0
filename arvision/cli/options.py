"""Options shared by several commands."""

from pathlib import Path
from typing import Any

import typer

from ..errors import RecipeError

__all__ = ["OTHER_KINDS", "Overrides", "RecipePath", "other_kind"]

RecipePath = typer.Argument(..., help="Recipe TOML file.", show_default=False, metavar="RECIPE")
Overrides = typer.Option(
    [], "--set", "-s", metavar="KEY.PATH=VALUE", show_default=False,
    help="Override a recipe key; VALUE in TOML syntax (2, 1e-3, true, [1, 2], 'text'; a bare word "
         "is a string). List items by index: decoders.0.weight=0.5. Repeatable.",
)

#: Recipes a plugin's command trains, by the table that marks them: the table -> (what the recipe
#: is, the command's words under ``arvision``). ``check`` hands them to that command's ``--check``.
OTHER_KINDS = {"vqkd": ("a VQ-KD tokenizer recipe", ("tokenizer", "train-vqkd"))}


def other_kind(data: dict[str, Any]) -> str | None:
    """The :data:`OTHER_KINDS` table in a recipe's tables, if any."""
    return next((table for table in OTHER_KINDS if table in data), None)


def other_kind_command(ctx: typer.Context, table: str, recipe: Path):
    """The click command that trains recipes marked by ``table`` (a RecipeError without it)."""
    what, words = OTHER_KINDS[table]
    command = ctx.find_root().command
    for word in words:
        command = command.get_command(ctx, word) if hasattr(command, "get_command") else None
        if command is None:
            break
    if command is None:
        raise RecipeError(f"{recipe}: {what} ([{table}] table), trained by `arvision "
                          f"{' '.join(words)}`, which no loaded plugin provides")
    return command


def refuse_other_kind(data: dict[str, Any], recipe: Path) -> None:
    """A recipe another command trains is a one-line RecipeError that names the command."""
    table = other_kind(data)
    if table is not None:
        what, words = OTHER_KINDS[table]
        raise RecipeError(f"{recipe}: {what} ([{table}] table): train it with `arvision "
                          f"{' '.join(words)} {recipe}`")
