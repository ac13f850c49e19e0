"""Segment layouts, plans and the block-causal mask."""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.plan import Plan, SegmentLayout, block_causal_mask
from conftest import tiny_recipe


def test_segment_positions_cover_cells_in_raster_order():
    layout = SegmentLayout(2, 2)
    positions = layout.segment_positions((4, 4))  # (S, T)
    assert positions.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert layout.cell((4, 6)) == (2, 3)
    with pytest.raises(ValueError, match="cannot be split into 2x2"):
        layout.cell((5, 4))


def test_plan_gathers_each_sample_in_its_own_order():
    plan = Plan(SegmentLayout(2, 2), torch.tensor([[0, 1, 2, 3], [3, 1, 0, 2]]))
    tokens = torch.arange(16).expand(2, 16)[..., None].float()  # (B, 16, 1)
    gathered = plan.gather(tokens, (4, 4))  # (B, S, T, 1)
    assert gathered[1, 0, :, 0].tolist() == [10, 11, 14, 15]
    assert gathered[1, 3, :, 0].tolist() == [8, 9, 12, 13]
    visible = plan.gather(tokens, (4, 4), slice(None, -1))
    assert visible.shape == (2, 3, 4, 1)
    # a finer (teacher) grid divided the same way
    assert plan.positions((8, 8)).shape == (2, 4, 16)


def test_plan_rejects_wrong_order_shape():
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        Plan(SegmentLayout(2, 2), torch.zeros(2, 3, dtype=torch.long))


def test_block_causal_mask_without_cls():
    mask = block_causal_mask(3, 2, cls=False)
    expected = torch.tensor([[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1] * 6] * 2)
    assert torch.equal(mask, expected.bool())


def test_block_causal_mask_cls_sees_all_and_only_last_segment_sees_cls():
    mask = block_causal_mask(3, 2, cls=True)  # (7, 7)
    assert mask[0].all()
    assert mask[:, 0].tolist() == [True, False, False, False, False, True, True]
    assert torch.equal(mask[1:, 1:], block_causal_mask(3, 2, cls=False))


@pytest.mark.parametrize("name", ["random_segments", "random"])
def test_a_samples_order_depends_on_its_seed_alone(name):
    """Training draws each sample's order from its own seed: the same seed gives the same order
    in any batch, at any position, next to any other samples (so any number of ranks agree)."""
    layout = {"rows": 2, "cols": 2} if name == "random_segments" else {}
    recipe = tiny_recipe(ordering={"name": name, **layout})
    model = build_model(resolve(recipe))
    seeds = torch.arange(1000, 1032)
    together = model.plan(32, seeds=seeds).order
    alone = torch.cat([model.plan(1, seeds=seeds[i:i + 1]).order for i in range(32)])
    reversed_batch = model.plan(32, seeds=seeds.flip(0)).order.flip(0)
    assert torch.equal(together, alone) and torch.equal(together, reversed_batch)
    assert len({tuple(row) for row in together.tolist()}) > 8  # the seeds do draw different orders
    assert not torch.equal(model.plan(32, seeds=seeds + 1).order, together)


def test_fixed_orders_ignore_the_seeds():
    model = build_model(resolve(tiny_recipe(ordering={"name": "segments", "rows": 2, "cols": 2})))
    order = model.plan(5, seeds=torch.arange(5)).order
    assert order.tolist() == [[0, 1, 2, 3]] * 5
