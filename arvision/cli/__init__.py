"""The ``arvision`` command line: built-in commands plus whatever plugins add."""

import sys

import typer

from ..errors import ArvisionError
from ..plugins import Plugins, get_plugins
from . import ablate, check, convert, data, evaluate, export, plugins_command, run

__all__ = ["build_app", "main"]

HELP = """Autoregressive visual pretraining: tokenizers, targets, orderings and decoders as plugins.

Recipes (TOML) compose the components; `arvision check RECIPE` shows what a recipe builds and
`arvision run RECIPE` trains it."""


def build_app(plugins: Plugins) -> typer.Typer:
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command("run")(run.run)
    app.command("check")(check.check)
    app.command("ablate")(ablate.ablate)
    app.command("plugins")(plugins_command.plugins)
    app.add_typer(convert.convert_app(), name="convert")
    app.command("export")(export.export)
    app.add_typer(evaluate.eval_app(), name="eval")
    app.add_typer(data.data_app(), name="data")
    for impl in plugins.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:
            warn(f"plugin {impl.plugin_name!r} failed to add its commands: "
                 f"{type(exc).__name__}: {exc}")
    return app


def warn(message: str) -> None:
    print(f"arvision: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2, without a traceback."""
    try:
        plugins = get_plugins()
        for info in plugins.failures:
            warn(f"plugin {info.name!r} from {info.distribution or '?'} {info.version or ''} "
                 f"failed to load and was skipped: {info.error}")
        build_app(plugins)(args=argv, prog_name="arvision")
    except ArvisionError as exc:
        print(f"arvision: error: {exc}", file=sys.stderr)
        sys.exit(2)
