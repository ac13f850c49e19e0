"""Recipes: TOML files read into frozen attrs classes (docs/recipes.md lists every key).

:mod:`~arvision.recipe.schema` holds the classes, :mod:`~arvision.recipe.files` reads and
overrides the tables, :mod:`~arvision.recipe.structure` validates them against the registered
components.
"""

from .files import apply_override, drop_none, read_recipe_data, read_toml
from .schema import (
    ComponentTable,
    DataConfig,
    DecoderTable,
    EncoderConfig,
    EvalConfig,
    LogConfig,
    OrderingTable,
    Recipe,
    RunConfig,
    SyntheticConfig,
    TargetTable,
    TokenizerTable,
    TrainConfig,
)
from .structure import (
    load_recipe,
    recipe_converter,
    recipe_to_dict,
    save_recipe,
    structure_config,
    structure_recipe,
)

__all__ = [
    "ComponentTable", "DataConfig", "DecoderTable", "EncoderConfig", "EvalConfig", "LogConfig",
    "OrderingTable",
    "Recipe", "RunConfig", "SyntheticConfig", "TargetTable", "TokenizerTable", "TrainConfig",
    "apply_override", "drop_none", "load_recipe", "read_recipe_data", "read_toml",
    "recipe_converter", "recipe_to_dict", "save_recipe", "structure_config", "structure_recipe",
]
