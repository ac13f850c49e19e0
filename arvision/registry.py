"""One registry per kind of component, filled by the plugins' ``register_*`` hooks."""

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs

from .errors import ArvisionError

__all__ = ["KINDS", "ComponentLookup", "DuplicateComponentError", "Registration", "Registry",
           "UnknownComponentError"]

#: The kinds of component, in the order recipes and listings show them.
KINDS = ("tokenizer", "ordering", "decoder", "target")


class UnknownComponentError(ArvisionError, LookupError):
    """A recipe names a component no plugin registered."""


class DuplicateComponentError(ArvisionError):
    """Two plugins registered the same name for one kind."""


@attrs.frozen
class Registration:
    """What a plugin registered: a named factory and the attrs class of its recipe table."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type
    plugin: str  # the plugin (entry point) name that registered it

    def __attrs_post_init__(self) -> None:
        if not attrs.has(self.config):
            raise TypeError(
                f"plugin {self.plugin!r}: {self.kind} {self.name!r} config must be an attrs class, "
                f"got {self.config!r}"
            )


@attrs.define
class Registry:
    """Name -> :class:`Registration` for one kind of component."""

    kind: str
    entries: dict[str, Registration] = attrs.field(factory=dict)

    def add(self, registration: Registration) -> None:
        name = registration.name
        if name in self.entries:
            first = self.entries[name].plugin
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is registered twice: by plugin {first!r} and by plugin "
                f"{registration.plugin!r}; block one of them with ARVISION_BLOCK_PLUGINS"
            )
        self.entries[name] = registration

    def get(self, name: str) -> Registration:
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = sorted(self.entries)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {self.kind} {name!r} ({hint}known: {', '.join(known) or 'none'})"

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[Registration]:
        return iter(self.entries.values())


class ComponentLookup(Protocol):
    """Where recipes look components up: the loaded plugins (:class:`arvision.plugins.Plugins`),
    or a test's own registries."""

    def registry(self, kind: str) -> Registry: ...

    def get(self, kind: str, name: str) -> Registration: ...
