"""The ``arvision tokenizer`` command group, shared by the plugins that add tokenizer tools."""

import typer

__all__ = ["tokenizer_group"]


def tokenizer_group(app: typer.Typer) -> typer.Typer:
    """The ``tokenizer`` group of ``app``: the one a plugin added already, else a new one."""
    for info in app.registered_groups:
        if info.name == "tokenizer" and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(help="Tokenizer tools: fit a palette, train a VQ-KD tokenizer.",
                        no_args_is_help=True)
    app.add_typer(group, name="tokenizer")
    return group
