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

    One row per component (kind, name, plugin, distribution and version); plugins that failed to
    load follow the table with their error. Plugins come from the 'arvision' entry-point group.
    ARVISION_DISABLE_PLUGIN_AUTOLOAD=1 loads the built-ins only; ARVISION_BLOCK_PLUGINS=a,b skips
    the named plugins.
    """
    infos = get_plugins().infos
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in infos], indent=2))
        return
    console = Console()
    # Long names fold onto a second line instead of being cut; nothing is shortened with '...'.
    table = Table(box=None, pad_edge=False)
    for column in ("kind", "name", "plugin", "distribution"):
        table.add_column(column, overflow="fold")
    for kind in KINDS:
        for info in sorted(infos, key=lambda info: info.name):
            for name in sorted(info.registers.get(kind, [])):
                table.add_row(kind, name, info.name, _distribution(info))
    for info in infos:
        if info.error is None and not any(info.registers.get(kind) for kind in KINDS):
            table.add_row("-", "-", info.name, _distribution(info))
    console.print(table)
    for info in infos:
        if info.error is not None:
            console.print(f"plugin {info.name!r} ({_distribution(info)}) failed to load: "
                          f"{info.error}", soft_wrap=False, highlight=False, markup=False)


def _distribution(info) -> str:
    return f"{info.distribution or '-'} {info.version or ''}".strip()
