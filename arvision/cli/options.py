"""Options shared by several commands."""

import typer

__all__ = ["Overrides", "RecipePath"]

RecipePath = typer.Argument(..., help="Recipe TOML file.", show_default=False, metavar="RECIPE")
Overrides = typer.Option(
    [], "--set", "-s", metavar="KEY.PATH=VALUE", show_default=False,
    help="Override a recipe key; VALUE in TOML syntax (2, 1e-3, true, [1, 2], 'text'; a bare word "
         "is a string). List items by index: decoders.0.weight=0.5. Repeatable.",
)
