"""Tests of the snake ordering, run against the installed package (``pip install .`` first)."""

import itertools

import arvision_snake
import pytest
import torch
from arvision_snake import SnakeConfig, SnakeOrdering, register_orderings, snake_order

from arvision.errors import RecipeError
from arvision.plan import Plan, SegmentLayout
from arvision.plugins import load_plugins
from arvision.recipe import load_recipe

# Cells of a 3x3 grid:   A 2x4 grid:
#   0 1 2                  0 1 2 3
#   3 4 5                  4 5 6 7
#   6 7 8
SNAKES = {
    (3, 3): [0, 1, 2, 5, 4, 3, 6, 7, 8],
    (2, 4): [0, 1, 2, 3, 7, 6, 5, 4],
    (4, 2): [0, 1, 3, 2, 4, 5, 7, 6],
    (1, 3): [0, 1, 2],
    (3, 1): [0, 1, 2],
}
COLUMN_SNAKES = {
    (3, 3): [0, 3, 6, 7, 4, 1, 2, 5, 8],
    (2, 4): [0, 4, 5, 1, 2, 6, 7, 3],
}


@pytest.mark.parametrize("grid", list(SNAKES))
def test_snake_path(grid):
    plan = SnakeOrdering(SnakeConfig(), grid).plan(2)
    assert plan.order.tolist() == [SNAKES[grid]] * 2


@pytest.mark.parametrize("grid", list(COLUMN_SNAKES))
def test_column_snake_path(grid):
    plan = SnakeOrdering(SnakeConfig(columns=True), grid).plan(1)
    assert plan.order.tolist() == [COLUMN_SNAKES[grid]]


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (5, 7), (8, 3), (14, 14)])
@pytest.mark.parametrize("columns", [False, True])
def test_every_cell_once_and_each_step_to_a_neighbour(grid, columns):
    order = snake_order(*grid, columns=columns)
    assert sorted(order) == list(range(grid[0] * grid[1]))
    width = grid[1]
    for a, b in itertools.pairwise(order):
        assert abs(a // width - b // width) + abs(a % width - b % width) == 1


def test_plan_shape_and_dtype():
    ordering = SnakeOrdering(SnakeConfig(), (4, 6))
    plan = ordering.plan(5, generator=torch.Generator().manual_seed(0), device="cpu")
    assert isinstance(plan, Plan)
    assert plan.layout == SegmentLayout(4, 6)
    assert plan.order.shape == (5, 24)  # (B, S)
    assert plan.order.dtype == torch.long
    positions = plan.positions((4, 6))  # (B, S, 1): one token per segment
    assert positions.shape == (5, 24, 1)
    assert positions[0, :, 0].tolist() == snake_order(4, 6)


def test_registers_snake():
    calls = []
    register_orderings(register=lambda *args: calls.append(args))
    assert calls == [("snake", SnakeOrdering, SnakeConfig)]


RECIPE = """
[tokenizer]
name = "pixels"
[ordering]
name = "snake"
{options}
[[decoders]]
name = "linear"
[target]
name = "mse"
"""


def load(tmp_path, options=""):
    """Read a recipe with a fresh plugin manager: the built-ins plus this module, registered inline."""
    plugins = load_plugins(autoload=False, extra={"snake": arvision_snake})
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(options=options))
    return load_recipe(path, plugins=plugins)


def test_recipe_table_is_validated_by_the_config(tmp_path):
    assert load(tmp_path).ordering.config == SnakeConfig(columns=False)
    assert load(tmp_path, "columns = true").ordering.config == SnakeConfig(columns=True)
    with pytest.raises(RecipeError, match=r"ordering\.rows: unknown key"):
        load(tmp_path, "rows = true")
    with pytest.raises(RecipeError, match=r"ordering\.columns: expected bool"):
        load(tmp_path, 'columns = "yes"')
