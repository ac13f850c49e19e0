"""AIM's prefix attention: per-sample prefix lengths, the per-sample mask, and the loss past the
prefix only."""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.plan import Plan, SegmentLayout, block_causal_mask, prefix_causal_mask
from arvision_plugins.patterns import SpiralConfig
from conftest import tiny_recipe


def prefix_model(**ordering):
    table = {"name": "raster", "prefix_attention": True, **ordering}
    return build_model(resolve(tiny_recipe(ordering=table), "tiny.toml"))


def test_prefix_attention_is_a_key_of_every_ordering_table():
    recipe = tiny_recipe(ordering={"name": "spiral", "prefix_attention": True})
    assert recipe.ordering.prefix_attention and recipe.ordering.config == SpiralConfig()
    assert not tiny_recipe(ordering={"name": "spiral"}).ordering.prefix_attention
    assert build_model(resolve(recipe)).prefix_attention


def test_prefix_mask_is_bidirectional_inside_and_block_causal_after():
    mask = prefix_causal_mask(4, 2, cls=False, prefix_length=torch.tensor([1, 3]))  # (2, 1, 8, 8)
    assert mask.shape == (2, 1, 8, 8)
    assert torch.equal(mask[0, 0], block_causal_mask(4, 2, cls=False))  # K = 1: plain causal
    inside = mask[1, 0, :6, :6]  # segments 0..2: the prefix
    assert inside.all()
    assert torch.equal(mask[1, 0, 6:], block_causal_mask(4, 2, cls=False)[6:])  # after it
    assert not mask[1, 0, :6, 6:].any()  # nothing in the prefix sees segment 3


def test_prefix_mask_keeps_the_cls_rule():
    mask = prefix_causal_mask(3, 2, cls=True, prefix_length=torch.tensor([2]))[0, 0]  # (7, 7)
    assert mask[0].all()  # CLS sees everything
    assert mask[:, 0].tolist() == [True, False, False, False, False, True, True]
    assert mask[1:5, 1:5].all()


def test_scored_targets_are_past_the_prefix():
    plan = Plan(SegmentLayout(1, 5), torch.arange(5).expand(2, -1),
                prefix_length=torch.tensor([1, 3]))
    # next: predictions 0..3 target segments 1..4; with K = 3 the targets 1, 2 are in the prefix
    assert plan.scored(slice(1, None)).tolist() == [[True] * 4, [False, False, True, True]]
    # visible: predictions 0..3 target segments 0..3
    assert plan.scored(slice(None, -1)).tolist() == [[False, True, True, True],
                                                     [False, False, False, True]]
    assert Plan(SegmentLayout(1, 5), torch.arange(5)[None]).scored(slice(1, None)) is None


@pytest.mark.parametrize(("prefix", "message"), [
    (torch.tensor([1]), r"prefix_length must be \(batch,\) = \(2,\)"),
    (torch.tensor([0, 2]), r"prefix_length must be in 1..4 .* got 0..2"),
    (torch.tensor([1, 5]), r"prefix_length must be in 1..4"),
])
def test_plan_rejects_a_bad_prefix(prefix, message):
    with pytest.raises(ValueError, match=message):
        Plan(SegmentLayout(1, 5), torch.arange(5).expand(2, -1), prefix_length=prefix)


def test_without_prefix_attention_one_mask_serves_the_batch():
    model = build_model(resolve(tiny_recipe(), "tiny.toml"))
    plan = model.plan(4, seeds=torch.arange(4))
    assert plan.prefix_length is None
    assert plan.mask(1, cls=True).shape == (16, 16)  # 15 visible tokens + CLS, shared


def test_a_samples_prefix_length_depends_on_its_seed_alone():
    model = prefix_model()
    seeds = torch.arange(500, 564)
    together = model.plan(64, seeds=seeds).prefix_length
    alone = torch.cat([model.plan(1, seeds=seeds[i:i + 1]).prefix_length for i in range(64)])
    reversed_batch = model.plan(64, seeds=seeds.flip(0)).prefix_length.flip(0)
    assert torch.equal(together, alone) and torch.equal(together, reversed_batch)
    assert together.min() >= 1 and together.max() <= 15  # 16 segments: 1..S-1
    assert len(set(together.tolist())) > 8
    assert model.plan(4, seeds=seeds[:4]).mask(1, cls=True).shape == (4, 1, 16, 16)


def test_prefix_lengths_cover_one_to_s_minus_one():
    model = prefix_model()
    drawn = model.draw_prefix(0, seeds=torch.arange(3000))
    assert set(drawn.tolist()) == set(range(1, 16))
    from_generator = model.draw_prefix(3000, generator=torch.Generator().manual_seed(0))
    assert set(from_generator.tolist()) == set(range(1, 16))


def test_expected_scored_targets():
    model = prefix_model()  # 16 segments
    assert model.expected_scored(slice(1, None)) == 8.0  # next: S / 2
    assert model.expected_scored(slice(None, -1)) == 7.0  # visible: S / 2 - 1


@pytest.mark.parametrize("predicts", ["next", "visible"])
def test_the_loss_ignores_targets_inside_the_prefix(predicts):
    model = build_model(resolve(tiny_recipe(
        ordering={"name": "raster", "prefix_attention": True},
        decoders=[{"name": "linear", "predicts": predicts}]), "tiny.toml"))
    images = torch.rand(2, 3, 16, 16)
    tokens = model.tokenizer(images)
    order = torch.stack([torch.arange(16), torch.randperm(16, generator=torch.Generator()
                                                          .manual_seed(0))])
    prefix = torch.tensor([6, 2])
    base = model(images, tokens=tokens, order=order, prefix_length=prefix).loss
    first_target = 1 if predicts == "next" else 0
    for b in range(2):
        for place in range(first_target, 16 if predicts == "next" else 15):
            changed = tokens.tokens.clone()
            row, col = divmod(int(order[b, place]), 4)
            changed[b, row, col] += 10.0
            loss = model(images, tokens=type(tokens)(changed), order=order,
                         prefix_length=prefix).loss
            if place < prefix[b]:
                assert torch.equal(loss, base), f"sample {b}: prefix target {place} is scored"
            else:
                assert not torch.equal(loss, base), f"sample {b}: target {place} is not scored"


def test_the_loss_is_the_scored_sum_over_the_expected_count():
    model = prefix_model()
    images = torch.rand(2, 3, 16, 16)
    tokens = model.tokenizer(images)
    order = torch.arange(16).expand(2, -1)
    prefix = torch.tensor([4, 10])
    loss = model(images, tokens=tokens, order=order, prefix_length=prefix).loss
    plan = model.plan(2, order, prefix_length=prefix)
    prediction = model.decoders["linear_next"](model.encoder(images, plan), plan).tokens
    target = plan.gather(tokens.tokens.flatten(1, 2), (4, 4), slice(1, None))
    per_token = (prediction - target).pow(2).mean(-1).flatten(1)  # (B, 15)
    scored = torch.cat([per_token[0, 3:], per_token[1, 9:]])  # targets 4.. and 10..
    torch.testing.assert_close(loss, scored.sum() / (2 * 8.0))
