"""eval.attention: probes read the frozen encoder bidirectionally, causally (a raster plan's
block-causal mask) or as it was trained."""

import json

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.evaluate import run_probes
from arvision.evaluate.attention import probe_attention
from arvision.evaluate.features import Extractor, load_encoder, resolve_attention
from arvision.plan import Plan, SegmentLayout, block_causal_mask
from arvision.pretrain import train
from conftest import run_cli, tiny_recipe


def test_natural_mask_of_a_raster_plan_is_causal():
    plan = Plan(SegmentLayout(2, 2), torch.arange(4)[None])
    mask = plan.natural_mask((2, 2), cls=False)  # one token per segment
    assert torch.equal(mask[0, 0], block_causal_mask(4, 1, cls=False))
    with_cls = plan.natural_mask((2, 2), cls=True)[0, 0]  # (5, 5)
    assert torch.equal(with_cls, block_causal_mask(4, 1, cls=True))


def test_natural_mask_follows_the_order_and_the_cells():
    """2x2 cells of a 4x4 grid visited 3, 0, 2, 1: token (0, 0) is in cell 0, second in order."""
    plan = Plan(SegmentLayout(2, 2), torch.tensor([[3, 0, 2, 1]]))
    mask = plan.natural_mask((4, 4), cls=True)[0, 0]  # (17, 17), natural token order after CLS
    cell = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).flatten()
    rank = torch.tensor([1, 3, 2, 0])[cell]  # place of each token's cell in the order
    assert torch.equal(mask[1:, 1:], rank[None, :] <= rank[:, None])
    assert mask[0].all() and mask[1:, 0].tolist() == (rank == 3).tolist()


def model_of(**ordering):
    return build_model(resolve(tiny_recipe(ordering=ordering), "tiny.toml"))


@pytest.mark.parametrize(("ordering", "requested", "mode", "order"), [
    ({"name": "raster"}, "as_trained", "causal", list(range(16))),
    ({"name": "raster"}, "causal", "causal", list(range(16))),
    ({"name": "raster"}, "bidirectional", "bidirectional", None),
    ({"name": "raster", "prefix_attention": True}, "as_trained", "bidirectional", None),
    ({"name": "raster", "prefix_attention": True}, "causal", "causal", list(range(16))),
    ({"name": "reverse_raster"}, "as_trained", "causal", list(range(15, -1, -1))),
    ({"name": "reverse_raster"}, "causal", "causal", list(range(16))),
    ({"name": "segments", "rows": 2, "cols": 2}, "causal", "causal", [0, 1, 2, 3]),
])
def test_modes_resolve_per_recipe(ordering, requested, mode, order):
    prefix = ordering.get("prefix_attention", False)
    model = model_of(**{key: value for key, value in ordering.items() if key != "prefix_attention"})
    resolved = probe_attention(requested, model.ordering, prefix)
    assert resolved.mode == mode and resolved.requested == requested
    assert (list(resolved.order) if resolved.order else None) == order


def test_as_trained_random_order_is_one_fixed_draw():
    model = model_of(name="random_segments")
    first = probe_attention("as_trained", model.ordering, False)
    assert first == probe_attention("as_trained", model.ordering, False)
    assert sorted(first.order) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown attention 'full'"):
        probe_attention("full", model.ordering, False)


def first_token_features(encoder, mask, images):
    with torch.no_grad():
        (out,) = encoder.features(images, (2,), attn_mask=mask)  # (B, 1 + 16, D)
    return out[:, 1]  # the top-left patch


def test_causal_features_of_a_token_ignore_later_tokens():
    model = model_of(name="raster")
    encoder = model.encoder.eval()
    images = torch.rand(2, 3, 16, 16)
    changed = images.clone()
    changed[..., 12:, 12:] = 1 - changed[..., 12:, 12:]  # the last (bottom-right) patch only
    causal = probe_attention("causal", model.ordering, False).mask((4, 4), True)
    assert torch.equal(first_token_features(encoder, causal, images),
                       first_token_features(encoder, causal, changed))
    assert not torch.allclose(first_token_features(encoder, None, images),
                              first_token_features(encoder, None, changed))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A raster-trained encoder and one trained with prefix attention (2 steps each)."""
    root = tmp_path_factory.mktemp("attention")
    return {name: train(tiny_recipe(ordering={"name": "raster", "prefix_attention": prefix},
                                    train={"steps": 2}), root / name).checkpoint
            for name, prefix in (("raster", False), ("prefix", True))}


def features(checkpoint, attention):
    loaded = load_encoder(checkpoint)
    extract = Extractor(loaded, (1, 2), torch.device("cpu"), "fp32",
                        resolve_attention(loaded, attention))
    return extract(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_modes_differ_for_a_raster_trained_encoder(checkpoints):
    by_mode = {mode: features(checkpoints["raster"], mode)
               for mode in ("bidirectional", "causal", "as_trained")}
    assert not torch.allclose(by_mode["bidirectional"], by_mode["causal"])
    assert torch.equal(by_mode["as_trained"], by_mode["causal"])


def test_as_trained_is_bidirectional_for_an_encoder_trained_to_attend_both_ways(checkpoints):
    by_mode = {mode: features(checkpoints["prefix"], mode)
               for mode in ("bidirectional", "causal", "as_trained")}
    assert torch.equal(by_mode["as_trained"], by_mode["bidirectional"])
    assert not torch.allclose(by_mode["causal"], by_mode["bidirectional"])


def test_probes_record_the_mode_and_cache_each_apart(checkpoints, tmp_path, capsys):
    checkpoint = checkpoints["raster"]
    options = {"limit": 32, "eval_limit": 16, "out_dir": tmp_path}
    default = run_probes(checkpoint, ("knn",), **options)["knn"]
    assert (default["attention"], default["attention_requested"]) == ("causal", "as_trained")
    both = run_probes(checkpoint, ("knn",), attention="bidirectional", **options)["knn"]
    assert both["attention"] == "bidirectional"
    assert len(list((tmp_path / "features").glob("*.pt"))) == 4  # 2 splits x 2 modes
    code, out, err = run_cli(capsys, "eval", "knn", str(checkpoint), "--attention", "causal",
                             "--limit", "32", "--eval-limit", "16", "--out", str(tmp_path),
                             "--json")
    assert code == 0, err
    assert "extracting" not in err  # causal = as_trained here: read from the cache
    assert json.loads(out)["knn"]["attention_requested"] == "causal"
    code, _, err = run_cli(capsys, "eval", "knn", str(checkpoint), "--attention", "full")
    assert code == 2 and "--attention" in err


def test_the_recipes_eval_attention_is_the_default(tmp_path):
    recipe = tiny_recipe(ordering={"name": "raster"}, train={"steps": 1},
                         eval={"attention": "bidirectional", "probes": ["knn"]})
    checkpoint = train(recipe, tmp_path / "run").checkpoint
    assert resolve_attention(load_encoder(checkpoint)).mode == "bidirectional"
    assert resolve_attention(load_encoder(checkpoint), "causal").mode == "causal"
