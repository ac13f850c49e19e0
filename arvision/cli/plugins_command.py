"""``arvision plugins``: what is installed and what each plugin registers."""

import json

import typer
from rich.console import Console
from rich.table import Table

from ..plugins import get_plugins
from ..registry import KINDS


def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
            ) -> None:
    """List every plugin: distribution, version, and the components it registers.

    Plugins come from the 'arvision' entry-point group. ARVISION_DISABLE_PLUGIN_AUTOLOAD=1 loads
    the built-ins only; ARVISION_BLOCK_PLUGINS=a,b skips the named plugins.
    """
    infos = get_plugins().infos
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in infos], indent=2))
        return
    table = Table("plugin", "distribution", "version", *KINDS, "error")
    for info in infos:
        table.add_row(info.name, info.distribution or "-", info.version or "-",
                      *(", ".join(info.registers.get(kind, [])) for kind in KINDS),
                      info.error or "")
    Console().print(table)
