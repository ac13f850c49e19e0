"""No information leak: a prediction for segment k never depends on segments after k in the plan.

With prefix attention (AIM) a prediction made inside the prefix sees the whole prefix; those are
not scored. A scored prediction sees only segments up to its own, never its target.
"""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.plugins import load_plugins
from conftest import tiny_recipe
from test_components import EXAMPLES, palette_file

ORDERINGS = sorted(load_plugins(autoload=False).registry("ordering").entries)


def _orders(num_segments: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shuffled = [torch.randperm(num_segments, generator=generator) for _ in range(2)]
    return [torch.arange(num_segments).expand(2, -1), torch.stack(shuffled)]


def _check_prefix_only(model, order, run, per_token, key, prefix_length=None):
    """For every predicted segment k, the input gradient is zero on segments after k.

    ``run(plan)`` returns (inputs, memory); ``per_token(grad)`` regroups the inputs' gradient as
    one row per grid token (B, h*w, ...). With ``prefix_length`` (B,), prediction k of sample b
    sees exactly the segments up to max(k, K_b - 1), and every sample is checked.
    """
    plan = model.plan(order.shape[0], order, prefix_length=prefix_length)
    inputs, memory = run(plan)
    prediction = model.decoders[key](memory, plan).tokens  # (B, S-1, T, D)
    samples = range(order.shape[0]) if prefix_length is not None else [0]
    for b in samples:
        last_prefix = int(prefix_length[b]) - 1 if prefix_length is not None else 0
        for k in range(plan.num_segments - 1):
            (grad,) = torch.autograd.grad(prediction[b, k].sum(), inputs, retain_graph=True)
            magnitude = per_token(grad).abs().flatten(2).sum(-1)  # (B, h*w)
            influence = plan.gather(magnitude, model.encoder.grid).sum(-1)  # (B, S)
            seen = max(k, last_prefix)
            assert influence[b, seen] > 0, f"prediction {k} ignores segment {seen}"
            assert torch.all(influence[b, seen + 1:] == 0), f"prediction {k} sees later segments"
            others = torch.cat([influence[:b], influence[b + 1:]])
            assert torch.all(others == 0), "prediction leaks across samples"


def per_patch_of(model):
    """Pixel gradients (B, C, H, W) -> one row per patch (B, h*w, C, p, p)."""
    patch = model.encoder.vit.patch_embed.patch_size[0]

    def per_patch(grad):
        patches = grad.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, h, w, p, p)
        return patches.permute(0, 2, 3, 1, 4, 5).flatten(1, 2)

    return per_patch


@pytest.mark.parametrize("predicts", ["next", "visible"])
@pytest.mark.parametrize("shuffled", [False, True], ids=["raster", "permuted"])
def test_patch_stem_is_block_causal(predicts, shuffled):
    recipe = tiny_recipe(decoders=[{"name": "linear", "predicts": predicts}])
    model = build_model(resolve(recipe, "tiny.toml")).eval()
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    order = _orders(model.ordering.layout.num_segments)[shuffled]
    _check_prefix_only(model, order, lambda plan: (images, model.encoder(images, plan)),
                       per_patch_of(model), f"linear_{predicts}")


@pytest.mark.parametrize("shuffled", [False, True], ids=["raster", "permuted"])
def test_token_stem_is_causal(shuffled, tmp_path):
    recipe = tiny_recipe(
        tokenizer={"name": "palette", "path": palette_file(tmp_path), "num_colors": 8, "size": 6},
        target={"name": "ce"}, encoder={"stem": "tokens"},
    )
    model = build_model(resolve(recipe, "tiny.toml")).eval()
    ids = model.tokenizer(torch.rand(2, 3, 16, 16)).tokens  # (B, 6, 6)
    embedded = {}

    def keep(_module, _inputs, output):  # the embedded ids (B, 36, D) are the inputs to check
        embedded["x"] = output
        return output

    model.encoder.token_embed.register_forward_hook(keep)

    def run(plan):
        memory = model.encoder(None, plan, ids)
        return embedded["x"], memory

    order = _orders(model.ordering.layout.num_segments)[shuffled]
    _check_prefix_only(model, order, run, lambda grad: grad, "linear_next")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digpt_decoders_never_see_later_segments(seed):
    """Both transformer decoders, 2x2 random segments, several random plans."""
    recipe = tiny_recipe(
        ordering={"name": "random_segments", "rows": 2, "cols": 2},
        encoder={"depth": 4, "pos_embed": "sincos"}, target={"name": "cosine"},
        decoders=[{"name": "transformer", "predicts": role, "key": role, "dim": 16, "depth": 2,
                   "num_heads": 2} for role in ("next", "visible")],
    )
    model = build_model(resolve(recipe, "tiny.toml")).eval()
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    order = model.ordering.plan(2, torch.Generator().manual_seed(seed)).order
    for role in ("next", "visible"):
        _check_prefix_only(model, order, lambda plan: (images, model.encoder(images, plan)),
                           per_patch_of(model), role)


@pytest.mark.parametrize("decoder", [{"name": "linear"}, {"name": "mlp", "dim": 16, "depth": 2}],
                         ids=["linear", "mlp"])
@pytest.mark.parametrize("predicts", ["next", "visible"])
@pytest.mark.parametrize("name", ORDERINGS)
def test_every_ordering_is_block_causal(name, predicts, decoder):
    """Registry-driven: each ordering's own plans (fixed, or two random ones) leak nothing, with
    the per-token heads (the transformer decoders: below)."""
    recipe = tiny_recipe(**EXAMPLES["ordering", name](None),
                         decoders=[{**decoder, "predicts": predicts}])
    model = build_model(resolve(recipe, "tiny.toml")).eval()
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    order = model.plan(2, generator=torch.Generator().manual_seed(1)).order
    assert model.plan(2, generator=torch.Generator().manual_seed(1)).prefix_length is None
    _check_prefix_only(model, order, lambda plan: (images, model.encoder(images, plan)),
                       per_patch_of(model), f"{decoder['name']}_{predicts}")


@pytest.mark.parametrize("predicts", ["next", "visible"])
@pytest.mark.parametrize("name", ["raster", "random_segments", "spiral"])
def test_prefix_attention_sees_the_prefix_and_nothing_later(name, predicts):
    """Prefix lengths 1 (plain causal), 3 and S-1 (all visible segments bidirectional)."""
    recipe = tiny_recipe(ordering={**EXAMPLES["ordering", name](None)["ordering"],
                                   "prefix_attention": True},
                         decoders=[{"name": "linear", "predicts": predicts}])
    model = build_model(resolve(recipe, "tiny.toml")).eval()
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    segments = model.ordering.layout.num_segments
    order = model.plan(3, generator=torch.Generator().manual_seed(2)).order
    prefix = torch.tensor([1, min(3, segments - 1), segments - 1])
    _check_prefix_only(model, order, lambda plan: (images, model.encoder(images, plan)),
                       per_patch_of(model), f"linear_{predicts}", prefix)


def test_prefix_attention_in_the_transformer_decoders():
    """D-iGPT's decoders read the per-sample mask too: 2x2 random segments, prefixes 1..3."""
    recipe = tiny_recipe(
        ordering={"name": "random_segments", "rows": 2, "cols": 2, "prefix_attention": True},
        encoder={"depth": 4, "pos_embed": "sincos"}, target={"name": "cosine"},
        decoders=[{"name": "transformer", "predicts": role, "key": role, "dim": 16, "depth": 2,
                   "num_heads": 2} for role in ("next", "visible")],
    )
    model = build_model(resolve(recipe, "tiny.toml")).eval()
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    order = model.ordering.plan(3, torch.Generator().manual_seed(0)).order
    for role in ("next", "visible"):
        _check_prefix_only(model, order, lambda plan: (images, model.encoder(images, plan)),
                           per_patch_of(model), role, torch.tensor([1, 2, 3]))
