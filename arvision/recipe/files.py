"""Recipe files: TOML in, ``--set`` overrides, TOML out.

A recipe file is read into plain tables (:func:`read_recipe_data`), overridden key by key
(:func:`apply_override`, the ``--set KEY.PATH=VALUE`` syntax), and only then validated
(:mod:`arvision.recipe.structure`).
"""

import tomllib
from pathlib import Path
from typing import Any

from ..errors import RecipeError

__all__ = ["apply_override", "drop_none", "read_recipe_data", "read_toml"]


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word (``tokenizer.name=clip``) is a string


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` (value in TOML syntax; list items by index)."""
    key, sep, text = assignment.partition("=")
    parts = [part.strip() for part in key.strip().split(".")]
    if not sep or not all(parts):
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[: depth + 1], assignment)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, parts, assignment)] = _parse_value(text.strip())
    else:
        node[last] = _parse_value(text.strip())


def _index(node: list, part: str, parts: list[str], assignment: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"--set {assignment!r}: {'.'.join(parts)}: expected an index below "
                          f"{len(node)}")
    return int(part)


def _step(node: Any, part: str, parts: list[str], assignment: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, parts, assignment)]
    child = node.setdefault(part, {})
    if not isinstance(child, dict | list):
        raise RecipeError(f"--set {assignment!r}: {'.'.join(parts)} is a value, not a table")
    return child


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: expected a recipe file, found a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: invalid TOML: not UTF-8 text") from None


def read_recipe_data(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """A recipe file's tables with the ``--set`` overrides applied (not yet validated)."""
    path = Path(path)
    data = read_toml(path)
    for assignment in overrides:
        try:
            apply_override(data, assignment)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None
    return data


def drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [drop_none(item) for item in value]
    return value
