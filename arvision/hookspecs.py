"""The hooks a plugin can implement.

A plugin is a module (or object) reachable through the ``arvision`` entry-point group. Each
``register_*`` hook receives a ``register`` callback and calls it once per component::

    @arvision.hookimpl
    def register_orderings(register):
        register("snake", SnakeOrdering, SnakeConfig)

``register(name, factory, config)`` takes the component's name as recipes spell it, the factory
(usually the component class) and the frozen attrs class that validates the component's recipe
table. How each kind of factory is called is documented in :mod:`arvision.components`.
"""

from collections.abc import Callable
from typing import Any

import pluggy
import typer

__all__ = ["Register", "hookspec"]

hookspec = pluggy.HookspecMarker("arvision")

#: ``register(name, factory, config)``; see the module docstring.
Register = Callable[[str, Callable[..., Any], type], None]


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers: images in [0, 1] -> target tokens (:class:`~arvision.components.Tokenizer`)."""


@hookspec
def register_orderings(register: Register) -> None:
    """Register orderings: a grid -> segments, per-sample orders (:class:`~arvision.components.Ordering`)."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register decoders: encoder memory + plan -> predictions (:class:`~arvision.components.Decoder`)."""


@hookspec
def register_targets(register: Register) -> None:
    """Register targets: predictions + tokens -> loss (:class:`~arvision.components.Target`)."""


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands or command groups to the ``arvision`` command line."""
