"""No information leak: a prediction for segment k never depends on segments after k in the plan."""

import pytest
import torch

from arvision.build import build_model, resolve
from conftest import tiny_recipe
from test_components import palette_file


def _orders(num_segments: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shuffled = [torch.randperm(num_segments, generator=generator) for _ in range(2)]
    return [torch.arange(num_segments).expand(2, -1), torch.stack(shuffled)]


def _check_prefix_only(model, order, run, per_token, key):
    """For every predicted segment k, the input gradient is zero on segments after k.

    ``run(plan)`` returns (inputs, memory); ``per_token(grad)`` regroups the inputs' gradient as
    one row per grid token (B, h*w, ...).
    """
    plan = model.plan(order.shape[0], order)
    inputs, memory = run(plan)
    prediction = model.decoders[key](memory, plan).tokens  # (B, S-1, T, D)
    for k in range(plan.num_segments - 1):
        (grad,) = torch.autograd.grad(prediction[0, k].sum(), inputs, retain_graph=True)
        magnitude = per_token(grad).abs().flatten(2).sum(-1)  # (B, h*w)
        influence = plan.gather(magnitude, model.encoder.grid).sum(-1)  # (B, S)
        assert influence[0, k] > 0, f"prediction {k} ignores its own segment"
        assert torch.all(influence[0, k + 1:] == 0), f"prediction {k} sees later segments"
        assert torch.all(influence[1:] == 0), "prediction leaks across samples"


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
