"""Tests of the spiral ordering, run against the installed package (``pip install .`` first)."""

import arvision_spiral
import pytest
import torch
from arvision_spiral import SpiralConfig, SpiralOrdering, register_orderings, spiral_order

from arvision.errors import RecipeError
from arvision.plan import Plan, SegmentLayout
from arvision.plugins import load_plugins
from arvision.recipe import load_recipe

# Cells of a 3x3 grid:   A 2x4 grid:
#   0 1 2                  0 1 2 3
#   3 4 5                  4 5 6 7
#   6 7 8
SPIRALS = {
    (3, 3): [0, 1, 2, 5, 8, 7, 6, 3, 4],
    (2, 4): [0, 1, 2, 3, 7, 6, 5, 4],
    (4, 2): [0, 1, 3, 5, 7, 6, 4, 2],
    (3, 4): [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6],
    (1, 3): [0, 1, 2],
    (3, 1): [0, 1, 2],
}


@pytest.mark.parametrize("grid", list(SPIRALS))
def test_spiral_path(grid):
    plan = SpiralOrdering(SpiralConfig(), grid).plan(2)
    assert plan.order.tolist() == [SPIRALS[grid]] * 2


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (5, 7), (8, 3), (14, 14)])
def test_every_cell_once(grid):
    order = spiral_order(*grid)
    assert sorted(order) == list(range(grid[0] * grid[1]))


@pytest.mark.parametrize("grid", [(3, 3), (2, 4), (5, 6)])
def test_outward_is_the_reverse(grid):
    inward = SpiralOrdering(SpiralConfig(inward=True), grid).plan(1).order[0]  # (S,)
    outward = SpiralOrdering(SpiralConfig(inward=False), grid).plan(1).order[0]  # (S,)
    assert outward.tolist() == inward.flip(0).tolist()


def test_plan_shape_and_dtype():
    ordering = SpiralOrdering(SpiralConfig(), (4, 6))
    plan = ordering.plan(5, generator=torch.Generator().manual_seed(0), device="cpu")
    assert isinstance(plan, Plan)
    assert plan.layout == SegmentLayout(4, 6)
    assert plan.order.shape == (5, 24)  # (B, S)
    assert plan.order.dtype == torch.long
    positions = plan.positions((4, 6))  # (B, S, 1): one token per segment
    assert positions.shape == (5, 24, 1)
    assert positions[0, :, 0].tolist() == spiral_order(4, 6)


def test_registers_spiral():
    calls = []
    register_orderings(register=lambda *args: calls.append(args))
    assert calls == [("spiral", SpiralOrdering, SpiralConfig)]


RECIPE = """
[tokenizer]
name = "pixels"
[ordering]
name = "spiral"
{options}
[[decoders]]
name = "linear"
[target]
name = "mse"
"""


def load(tmp_path, options=""):
    """Read a recipe with a fresh plugin manager: the built-ins plus this module, registered inline."""
    plugins = load_plugins(autoload=False, extra={"spiral": arvision_spiral})
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(options=options))
    return load_recipe(path, plugins=plugins)


def test_recipe_table_is_validated_by_the_config(tmp_path):
    assert load(tmp_path).ordering.config == SpiralConfig(inward=True)
    assert load(tmp_path, "inward = false").ordering.config == SpiralConfig(inward=False)
    with pytest.raises(RecipeError, match=r"ordering\.outward: unknown key"):
        load(tmp_path, "outward = true")
    with pytest.raises(RecipeError, match=r"ordering\.inward: expected bool"):
        load(tmp_path, 'inward = "yes"')
