"""Validating recipe tables into :class:`~arvision.recipe.schema.Recipe`, and back to tables.

One strict cattrs converter (:func:`arvision.config.make_converter`) plus one hook for the
component tables: ``[tokenizer]``, ``[ordering]``, ``[target]`` and each ``[[decoders]]`` entry
name a registered component, whose registration is looked up once here and carried by the table
(``table.registration``); the rest of the table is validated by that component's config class.
The registrations come from the caller (:func:`arvision.plugins.get_plugins`), so this module does
not load plugins.
"""

import functools
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomli_w

from ..config import INLINE_FIELD, FieldError, error_lines, make_converter
from ..errors import RecipeError
from ..registry import ComponentLookup, UnknownComponentError
from .files import drop_none, read_recipe_data
from .schema import ComponentTable, Recipe

__all__ = ["load_recipe", "recipe_converter", "recipe_to_dict", "save_recipe", "structure_config",
           "structure_recipe"]


@functools.cache
def _table_shape(cls: type[ComponentTable], config: type) -> type:
    """The table's shared keys (``predicts``, ``weight``, ...) plus the component's own keys as one
    class, so one structuring pass reports the errors of both."""
    shared = {f.name: attrs.field(type=f.type, default=f.default, validator=f.validator)
              for f in attrs.fields(cls) if f.name in cls.shared_keys()}
    return attrs.make_class(cls.__name__, {**shared, INLINE_FIELD: attrs.field(type=config)},
                            kw_only=True)


def _component_hook(converter: cattrs.Converter, plugins: ComponentLookup | None):
    def structure(data: Any, cls: type[ComponentTable]) -> ComponentTable:
        if plugins is None:
            raise TypeError("component tables need the registered components to be read")
        if not isinstance(data, dict):
            raise TypeError(f"expected a table with a 'name' key, got {data!r}")
        if "name" not in data:
            raise FieldError("name", f"required key is missing (known {cls.KIND}s: "
                             f"{', '.join(sorted(plugins.registry(cls.KIND).entries))})")
        name = data["name"]
        if not isinstance(name, str):
            raise FieldError("name", f"expected str, got {name!r}")
        try:
            registration = plugins.get(cls.KIND, name)
        except UnknownComponentError as exc:
            raise FieldError("name", str(exc)) from None
        shared = cls.shared_keys()
        options = {key: value for key, value in data.items() if key not in {*shared, "name"}}
        parsed = converter.structure({**{key: data[key] for key in shared if key in data},
                                      INLINE_FIELD: options},
                                     _table_shape(cls, registration.config))
        return cls(name=name, config=getattr(parsed, INLINE_FIELD), registration=registration,
                   **{key: getattr(parsed, key) for key in shared})

    return structure


def _unstructure_component(converter: cattrs.Converter):
    def unstructure(table: ComponentTable) -> dict[str, Any]:
        shared = {key: converter.unstructure(getattr(table, key)) for key in table.shared_keys()}
        return {"name": table.name, **shared, **converter.unstructure(table.config)}

    return unstructure


def recipe_converter(plugins: ComponentLookup | None = None) -> cattrs.Converter:
    """The recipe converter; ``plugins`` looks component names up (needed to read component
    tables, not to write them)."""
    converter = make_converter()
    is_table = lambda tp: isinstance(tp, type) and issubclass(tp, ComponentTable)  # noqa: E731
    converter.register_structure_hook_func(is_table, _component_hook(converter, plugins))
    converter.register_unstructure_hook_func(is_table, _unstructure_component(converter))
    return converter


def structure_config(converter: cattrs.Converter, data: dict[str, Any], cls: type, source: str):
    """``data`` as a ``cls``; every problem in one RecipeError line naming ``source`` and keys."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, FieldError, ValueError, TypeError) as exc:
        lines = error_lines(exc)
        text = "; ".join(f"{key}: {message}" for key, message in lines)
        raise RecipeError(f"{source}: {text}") from None


def structure_recipe(data: dict[str, Any], source: str, plugins: ComponentLookup) -> Recipe:
    """Validated tables (``source`` names them in errors); ``plugins``: the registered components
    (:func:`arvision.plugins.get_plugins`)."""
    return structure_config(recipe_converter(plugins), data, Recipe, source)


def load_recipe(path: str | Path, overrides: list[str] = (), *, plugins: ComponentLookup) -> Recipe:
    """Read, override (``--set``) and validate a recipe; errors are one-line RecipeErrors."""
    return structure_recipe(read_recipe_data(path, overrides), str(path), plugins)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain TOML-able data (unset optional keys omitted)."""
    return drop_none(recipe_converter().unstructure(recipe))


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(tomli_w.dumps(recipe_to_dict(recipe)))
