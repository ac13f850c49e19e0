"""Load plugins from the ``arvision`` entry-point group and fill one registry per component kind.

Built-in components are plugins of the ``arvision`` distribution and load through the same entry
points as third-party packages. ``ARVISION_DISABLE_PLUGIN_AUTOLOAD=1`` loads the built-ins only;
``ARVISION_BLOCK_PLUGINS=a,b`` keeps the named plugins out. A plugin that fails to import or to
register is recorded with its distribution and error, and the others still load.
"""

import functools
import os
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .registry import KINDS, Registration, Registry

__all__ = ["BUILTIN_DISTRIBUTION", "ENTRY_POINT_GROUP", "PluginInfo", "Plugins", "get_plugins",
           "load_plugins"]

ENTRY_POINT_GROUP = "arvision"
BUILTIN_DISTRIBUTION = "arvision"
_HOOKS = {kind: f"register_{kind}s" for kind in KINDS}


@attrs.define
class PluginInfo:
    """One plugin as ``arvision plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    registers: dict[str, list[str]] = attrs.field(factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        if self.error is None:
            del data["error"]
        return data


@attrs.define
class Plugins:
    """The loaded plugins and the registries they filled."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    infos: list[PluginInfo]

    @property
    def failures(self) -> list[PluginInfo]:
        return [info for info in self.infos if info.error is not None]

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> Registration:
        return self.registries[kind].get(name)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _entry_point_plugins(autoload: bool, blocked: set[str]
                         ) -> Iterable[tuple[EntryPoint, PluginInfo]]:
    """Entry points to load, the built-ins first so a third-party name clash cannot hide them."""
    found = sorted(entry_points(group=ENTRY_POINT_GROUP),
                   key=lambda ep: (ep.dist is None or ep.dist.name != BUILTIN_DISTRIBUTION))
    for ep in found:
        dist = ep.dist.name if ep.dist else None
        if ep.name in blocked or (not autoload and dist != BUILTIN_DISTRIBUTION):
            continue
        yield ep, PluginInfo(ep.name, dist, ep.dist.version if ep.dist else None)


def load_plugins(
    *,
    autoload: bool | None = None,
    blocked: Iterable[str] = (),
    extra: Mapping[str, object] | None = None,
) -> Plugins:
    """Load entry-point plugins (plus ``extra`` objects, as tests register inline plugins)."""
    if autoload is None:
        autoload = not _env_flag("ARVISION_DISABLE_PLUGIN_AUTOLOAD")
    blocked = set(blocked) | _env_list("ARVISION_BLOCK_PLUGINS")
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    clashes: list[PluginInfo] = []
    for ep, info in _entry_point_plugins(autoload, blocked):
        if info.name in infos:
            first = infos[info.name].distribution
            info.error = (f"entry point name {info.name!r} is already taken by distribution "
                          f"{first!r}; rename it in {info.distribution}'s entry points")
            clashes.append(info)
            continue
        infos[info.name] = info
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = _error_text(exc)
    for name, plugin in (extra or {}).items():
        if name in blocked:
            continue
        infos[name] = PluginInfo(name, None, None)
        manager.register(plugin, name=name)
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind, hook in _HOOKS.items():
        _collect(manager, hook, kind, registries[kind], infos)
    return Plugins(manager, registries, [*infos.values(), *clashes])


def _collect(manager: pluggy.PluginManager, hook: str, kind: str, registry: Registry,
             infos: dict[str, PluginInfo]) -> None:
    # Each implementation is called with its own ``register`` so that every registration knows
    # its plugin: that is what names both sides of a clash and fills ``arvision plugins``. A hook
    # that raises registers nothing, and plugins are visited in the order they were loaded.
    for impl in getattr(manager.hook, hook).get_hookimpls():
        plugin = impl.plugin_name
        added: list[Registration] = []

        def register(name: str, factory: Any, config: type, _plugin: str = plugin,
                     _added: list = added) -> None:
            _added.append(Registration(kind, name, factory, config, _plugin))

        try:
            impl.function(register=register)
        except Exception as exc:
            infos[plugin].error = _error_text(exc)
            continue
        for registration in added:
            registry.add(registration)
            infos[plugin].registers.setdefault(kind, []).append(registration.name)


@functools.cache
def get_plugins() -> Plugins:
    """The process-wide plugins, loaded once from the environment's entry points."""
    return load_plugins()
