"""The cattrs converter that turns recipe tables into frozen attrs configs, and its errors.

One converter serves every recipe: it forbids unknown keys, accepts only values of the declared
type (no silent ``"3" -> 3`` or ``3.7 -> 3``), and its failures become ``(dotted key, message)``
pairs so the CLI can print one line per recipe without a traceback.
"""

import enum
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

__all__ = ["INLINE_FIELD", "FieldError", "check", "error_lines", "make_converter", "model_override",
           "non_negative", "positive", "probability", "setting", "unit_interval"]

#: The name of an attribute whose keys sit at its parent's level in the recipe: a component
#: table's own keys beside ``name``, ``predicts``, ... It does not appear in error paths.
INLINE_FIELD = "component_config"


class FieldError(ValueError):
    """A value that has the right type but is not acceptable; carries the field's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check(predicate: Callable[[Any], bool], expected: str):
    """An attrs validator raising :class:`FieldError` ``expected <expected>, got <value>``."""

    def validator(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not predicate(value):
            raise FieldError(attribute.name, f"expected {expected}, got {value!r}")

    return validator


#: Validators of numeric recipe settings (None passes: an unset optional key).
positive = check(lambda v: v > 0, "a number > 0")
non_negative = check(lambda v: v >= 0, "a number >= 0")
probability = check(lambda v: 0 <= v <= 1, "a number in [0, 1]")
unit_interval = check(lambda v: 0 < v <= 1, "a number in (0, 1]")


def setting(default: Any = attrs.NOTHING, help: str = "", **kwargs: Any) -> Any:
    """An attrs field whose ``help`` documents the recipe key (the recipe reference reads it)."""
    metadata = {"help": help, **kwargs.pop("metadata", {})}
    if isinstance(default, list | dict | set):
        raise TypeError("use an immutable default (a tuple) for recipe settings")
    return attrs.field(default=default, metadata=metadata, **kwargs)


def model_override(what: str) -> Any:
    """An optional positive setting whose default is the named model's own (``patch_size``,
    ``embed_dim``, ... of a timm ViT); ``what`` says what it is."""
    return setting(None, f"{what} (default: the model's)", validator=positive)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _strict(tp: type, accepts: tuple[type, ...], convert: Callable[[Any], Any]):
    def hook(value: Any, _tp: Any) -> Any:
        if (isinstance(value, bool) and bool not in accepts) or not isinstance(value, accepts):
            raise TypeError(f"expected {_type_name(tp)}, got {value!r}")
        return convert(value)

    return hook


def _structure_literal(value: Any, tp: Any) -> Any:
    choices = typing.get_args(tp)
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _tables_only(converter: cattrs.Converter):
    """Structure attrs classes from tables only: ``train = 3`` says a table was expected."""

    def factory(cls: type):
        structure = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True,
                                           _cattrs_detailed_validation=True)

        def hook(value: Any, tp: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a table, got {value!r}")
            return structure(value, tp)

        return hook

    return factory


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook_factory(attrs.has, _tables_only(converter))
    converter.register_structure_hook(int, _strict(int, (int,), int))
    converter.register_structure_hook(float, _strict(float, (int, float), float))
    converter.register_structure_hook(str, _strict(str, (str,), str))
    converter.register_structure_hook(bool, _strict(bool, (bool,), bool))
    converter.register_structure_hook(Path, _strict(Path, (str,), Path))
    converter.register_unstructure_hook(Path, str)
    converter.register_structure_hook_func(
        lambda tp: typing.get_origin(tp) is typing.Literal, _structure_literal
    )
    converter.register_unstructure_hook(enum.Enum, lambda value: value.value)
    return converter


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required key is missing"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _fields(cls: type) -> str:
    names = [f.name for f in attrs.fields(cls)] if attrs.has(cls) else []
    return f"expected one of: {', '.join(names)}" if names else "this table takes no other keys"


def error_lines(exc: BaseException, path: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Flatten a (cattrs) structuring error into ``(dotted key, message)`` pairs."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        noted, plain = exc.group_exceptions()
        pairs = []
        for sub, note in noted:
            step = getattr(note, "name", None)
            step = f"[{note.index}]" if step is None else step
            pairs += error_lines(sub, path if step == INLINE_FIELD else (*path, step))
        for sub in plain:
            pairs += error_lines(sub, path)
        return pairs
    if isinstance(exc, ForbiddenExtraKeysError):
        expected = _fields(exc.cl)
        return [(_dotted((*path, key)), f"unknown key ({expected})")
                for key in sorted(exc.extra_fields)]
    field = getattr(exc, "field", None)
    if field is not None:
        path = (*path, field)
    return [(_dotted(path), _message(exc))]


def _dotted(path: tuple[str, ...]) -> str:
    text = ".".join(path).replace(".[", "[")
    return text or "(top level)"

