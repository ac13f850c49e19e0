"""The fixed orders of AIM's ablation (as ml-l3m's ar_patterns gives them) and ARM's clusters."""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.errors import RecipeError
from arvision.plugins import load_plugins
from arvision_plugins.patterns import (
    ClustersConfig,
    ClustersOrdering,
    FixedRandomConfig,
    FixedRandomOrdering,
    SpiralConfig,
    SpiralOrdering,
)
from conftest import tiny_recipe
from test_components import EXAMPLES

#: The sequences ml-l3m's get_spiral_permutation and get_checkerboard_pattern return (first of
#: their pair), for grids (H, W); cells are numbered row-major.
ML_L3M_SPIRAL = {
    (4, 4): [6, 10, 9, 5, 1, 2, 3, 7, 11, 15, 14, 13, 12, 8, 4, 0],
    (3, 3): [4, 1, 2, 5, 8, 7, 6, 3, 0],
    (2, 4): [1, 2, 3, 7, 6, 5, 4, 0],
    (3, 4): [6, 5, 1, 2, 3, 7, 11, 10, 9, 8, 4, 0],
    (4, 3): [7, 4, 1, 2, 5, 8, 11, 10, 9, 6, 3, 0],
}
ML_L3M_CHECKERBOARD = {
    (4, 4): [0, 2, 5, 7, 8, 10, 13, 15, 1, 3, 4, 6, 9, 11, 12, 14],
    (3, 3): [0, 2, 4, 6, 8, 1, 3, 5, 7],
    (2, 4): [0, 2, 5, 7, 1, 3, 4, 6],
    (3, 4): [0, 2, 5, 7, 8, 10, 1, 3, 4, 6, 9, 11],
}
FIXED = ("raster", "spiral", "checkerboard", "reverse_raster", "fixed_random", "segments",
         "clusters")


def ordering(name: str, grid: tuple[int, int], **options):
    registration = load_plugins(autoload=False).get("ordering", name)
    return registration.factory(registration.config(**options), grid)


@pytest.mark.parametrize("grid", list(ML_L3M_SPIRAL))
def test_spiral_is_ml_l3ms(grid):
    assert ordering("spiral", grid).plan(2).order.tolist() == [ML_L3M_SPIRAL[grid]] * 2
    inward = SpiralOrdering(SpiralConfig(outward=False), grid).plan(1).order[0]
    assert inward.tolist() == ML_L3M_SPIRAL[grid][::-1]


@pytest.mark.parametrize("grid", list(ML_L3M_CHECKERBOARD))
def test_checkerboard_is_ml_l3ms(grid):
    assert ordering("checkerboard", grid).plan(1).order.tolist() == [ML_L3M_CHECKERBOARD[grid]]


def test_reverse_raster_starts_at_the_bottom_right():
    assert ordering("reverse_raster", (2, 3)).plan(1).order.tolist() == [[5, 4, 3, 2, 1, 0]]


@pytest.mark.parametrize("name", ["spiral", "checkerboard", "reverse_raster", "fixed_random"])
@pytest.mark.parametrize("grid", [(2, 2), (5, 7), (8, 3), (14, 14)])
def test_fixed_orders_visit_every_token_once(name, grid):
    plan = ordering(name, grid).plan(3)
    assert plan.layout.num_segments == grid[0] * grid[1]
    for row in plan.order.tolist():
        assert sorted(row) == list(range(grid[0] * grid[1]))


@pytest.mark.parametrize("name", ["spiral", "checkerboard", "reverse_raster", "fixed_random"])
def test_fixed_orders_over_segments(name):
    """rows x cols segments instead of tokens: the same pattern over the cells."""
    fixed = ordering(name, (8, 8), rows=2, cols=4)
    assert (fixed.layout.rows, fixed.layout.cols) == (2, 4)
    assert sorted(fixed.plan(1).order[0].tolist()) == list(range(8))
    if name == "spiral":
        assert fixed.plan(1).order[0].tolist() == ML_L3M_SPIRAL[2, 4]


def test_fixed_random_is_one_permutation_drawn_from_its_seed():
    first = FixedRandomOrdering(FixedRandomConfig(seed=1), (4, 4))
    again = FixedRandomOrdering(FixedRandomConfig(seed=1), (4, 4))
    other = FixedRandomOrdering(FixedRandomConfig(seed=2), (4, 4))
    order = first.plan(1).order[0]
    assert order.tolist() != list(range(16))
    assert torch.equal(first.plan_samples([5, 6, 7]).order, order.expand(3, -1))
    assert torch.equal(first.plan(4, torch.Generator().manual_seed(9)).order, order.expand(4, -1))
    assert torch.equal(again.plan(1).order[0], order)
    assert not torch.equal(other.plan(1).order[0], order)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_orders_ignore_the_samples_seeds(name):
    recipe = tiny_recipe(**EXAMPLES["ordering", name](None))
    model = build_model(resolve(recipe))
    orders = model.plan(6, seeds=torch.arange(6)).order
    assert torch.equal(orders, orders[:1].expand(6, -1))
    assert torch.equal(orders, model.plan(6, seeds=torch.arange(100, 106)).order)


def test_clusters_are_segments_given_by_their_size():
    clusters = ClustersOrdering(ClustersConfig(size=7), (14, 14))
    segments = ordering("segments", (14, 14), rows=2, cols=2)
    assert clusters.layout == segments.layout
    assert torch.equal(clusters.plan(2).order, segments.plan(2).order)
    arm = ClustersOrdering(ClustersConfig(size=4), (16, 8))  # ARM's 4x4 clusters
    assert (arm.layout.rows, arm.layout.cols) == (4, 2)
    assert arm.layout.tokens_per_segment((16, 8)) == 16


@pytest.mark.parametrize(("table", "message"), [
    ({"name": "clusters", "size": 3}, "tiny.toml: ordering.size: 3x3 clusters do not tile the 4x4 "
                                      "token grid"),
    ({"name": "clusters", "size": 4}, "tiny.toml: ordering.size: one 4x4 cluster covers the 4x4"),
    ({"name": "clusters", "size": 0}, "tiny.toml: ordering.size: expected a number > 0, got 0"),
    ({"name": "spiral", "rows": 2}, "tiny.toml: ordering.cols: set rows and cols together"),
    ({"name": "checkerboard", "rows": 3, "cols": 2}, "tiny.toml: ordering: a 4x4 grid cannot be "
                                                     "split into 3x2"),
])
def test_bad_layouts_are_one_line_recipe_errors(table, message):
    with pytest.raises(RecipeError) as exc:
        resolve(tiny_recipe(ordering=table), "tiny.toml")
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)

