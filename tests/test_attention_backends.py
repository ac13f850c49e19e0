"""train.attention_backend: flex attention with a BlockMask built from the plan attends exactly as
SDPA with the boolean mask (forward on the CPU, where flex attention has no backward in torch
2.14; gradients too in tests/test_gpu.py); 'auto' and the CPU refusal of 'flex'."""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.errors import RecipeError
from arvision.model import attention
from arvision.model.attention import attend, choose_backend
from arvision.plan import block_causal_mask, flex_block_mask, prefix_causal_mask
from arvision.pretrain import build_trainer
from conftest import tiny_recipe

# Eager flex attention on the CPU is an unfused reference: what these tests compare against.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

#: Plans of every shape: one token per segment (raster), random 2x2 segments, a prefix.
ORDERINGS = {
    "raster": {"name": "raster"},
    "random_segments": {"name": "random_segments", "rows": 2, "cols": 2},
    "prefix": {"name": "segments", "rows": 2, "cols": 2, "prefix_attention": True},
}
CASES = [pytest.param(ordering, cls, id=f"{name}-{'cls' if cls else 'no-cls'}")
         for name, ordering in ORDERINGS.items() for cls in (True, False)]


def backend_recipe(ordering: dict, cls: bool, **train):
    """The tiny recipe with a transformer (``next``) and a linear (``visible``) decoder; head
    width 16 for both encoder and decoder (what flex attention's CUDA kernels take)."""
    return tiny_recipe(ordering=ordering, encoder={"class_token": cls},
                       decoders=[{"name": "transformer", "predicts": "next", "dim": 32,
                                  "depth": 1, "num_heads": 2},
                                 {"name": "linear", "predicts": "visible"}],
                       train=train)


def run_backend(model, backend: str, images, seeds, grads: bool = False):
    """(loss parts, gradients by name or None) of one forward with ``model.attention = backend``."""
    model.attention = backend
    model.zero_grad()
    with torch.set_grad_enabled(grads):
        output = model(images, seeds=seeds)
    if not grads:
        return output.parts, None
    output.loss.backward()
    return output.parts, {name: p.grad.clone() for name, p in model.named_parameters()
                          if p.grad is not None}


@pytest.mark.parametrize("head_dim", [16, 8], ids=["flex", "narrow-heads-dense"])
@pytest.mark.parametrize(("cls", "prefix"), [(True, None), (False, None), (True, [1, 3]),
                                             (False, [2, 1])])
def test_block_mask_attends_as_the_boolean_mask(cls, prefix, head_dim):
    segments, per = 3, 5
    length = segments * per + cls
    q, k, v = torch.randn(3, 2, 2, length, head_dim).unbind(0)  # (B, H, L, C) each
    if prefix is None:
        boolean = block_causal_mask(segments, per, cls)
        block = flex_block_mask(segments, per, cls)
    else:
        boolean = prefix_causal_mask(segments, per, cls, torch.tensor(prefix))
        block = flex_block_mask(segments, per, cls, torch.tensor(prefix))
    torch.testing.assert_close(attend(q, k, v, block), attend(q, k, v, boolean))


@pytest.mark.parametrize(("ordering", "cls"), CASES)
def test_flex_model_gives_the_sdpa_losses(ordering, cls, monkeypatch):
    torch.manual_seed(0)
    model = build_model(resolve(backend_recipe(ordering, cls))).train()
    images, seeds = torch.rand(4, 3, 16, 16), torch.arange(4)
    expected, _ = run_backend(model, "sdpa", images, seeds)
    calls = []
    flex = attention.flex_attention
    monkeypatch.setattr(attention, "flex_attention",
                        lambda *args, **kwargs: calls.append(1) or flex(*args, **kwargs))
    got, _ = run_backend(model, "flex", images, seeds)
    assert len(calls) == 2 + 2  # every encoder block; the decoder's self- and cross-attention
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)


def test_flex_block_masks_are_built_inside_a_compiled_model():
    """train.compile = "model" with flex: the per-sample BlockMask of a prefix plan is traced
    with the rest (dynamo and AOT autograd; inductor's flex kernels need CUDA for training)."""
    torch.manual_seed(0)
    model = build_model(resolve(backend_recipe(ORDERINGS["prefix"], True))).train()
    images, seeds = torch.rand(4, 3, 16, 16), torch.arange(4)
    expected, _ = run_backend(model, "sdpa", images, seeds)
    model.compile(backend="aot_eager")
    got, _ = run_backend(model, "flex", images, seeds)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)


def test_auto_is_flex_on_cuda_and_sdpa_elsewhere():
    assert choose_backend("auto", torch.device("cuda", 0)) == "flex"
    assert choose_backend("auto", torch.device("cpu")) == "sdpa"
    assert choose_backend("sdpa", torch.device("cuda", 0)) == "sdpa"


def test_flex_on_the_cpu_is_a_recipe_error_naming_the_key(tmp_path):
    recipe = backend_recipe(ORDERINGS["random_segments"], True, attention_backend="flex",
                            device="cpu")
    with pytest.raises(RecipeError, match=r"^tiny.toml: train.attention_backend: 'flex' needs CUDA"):
        build_trainer(recipe, tmp_path, "tiny.toml")
