"""``train.recompute``: what backward recomputes instead of keeping from forward. Each kind must
give the recorded graph's values and gradients bitwise and keep less for backward."""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.memory import estimate_memory
from arvision.model.attention import explicit_attention
from arvision.model.recompute import RecomputingMlp, set_recompute
from arvision.plan import block_causal_mask
from conftest import tiny_recipe

PRECISIONS = ["fp32", "bf16"]

#: A D-iGPT-shaped tiny model: 2x2 random segments, a self- and cross-attending decoder with
#: an MLP, an encoder whose blocks have MLPs too.
DIGPT_TINY = {
    "ordering": {"name": "random_segments", "rows": 2, "cols": 2},
    "decoders": [{"name": "transformer", "predicts": "next", "dim": 32, "depth": 1,
                  "num_heads": 4}],
}


def saved_shapes(run) -> list[tuple[int, ...]]:
    """The shapes of the tensors autograd keeps while ``run()`` records its graph."""
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, shapes


def autocast(precision: str):
    return torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mask", ["none", "shared", "per-sample"])
def test_recomputed_attention_weights_are_the_recorded_graphs(precision, mask):
    masks = {"none": None, "shared": block_causal_mask(3, 3, False),
             "per-sample": torch.stack([block_causal_mask(3, 3, False),
                                        block_causal_mask(3, 3, False).flip(0, 1)])[:, None]}
    torch.manual_seed(0)
    base = torch.randn(3, 2, 4, 9, 8)  # q, k, v: (B, H, N, C)

    def run(recompute):
        q, k, v = (t.clone().requires_grad_() for t in base)
        with autocast(precision):
            out, shapes = saved_shapes(lambda: explicit_attention(
                q, k, v, masks[mask], recompute_weights=recompute))
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        return out, grads, shapes

    kept, kept_grads, kept_shapes = run(False)
    out, grads, shapes = run(True)
    assert torch.equal(out, kept)
    for grad, expected in zip(grads, kept_grads, strict=True):
        assert torch.equal(grad, expected)
    weights = (2, 4, 9, 9)  # (B, H, N, M)
    assert weights in kept_shapes and weights not in shapes


def test_attention_weights_are_kept_with_dropout():
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    with autocast("bf16"):
        _, shapes = saved_shapes(lambda: explicit_attention(q, k, v, None, 0.5, True))
    assert (2, 4, 9, 9) in shapes  # dropout's weights are random: they cannot be recomputed


@pytest.mark.parametrize("precision", PRECISIONS)
def test_recomputed_mlp_activation_is_the_recorded_graphs(precision):
    torch.manual_seed(0)
    mlp = RecomputingMlp(16, 64)
    x0 = torch.randn(3, 5, 16)

    def run(recompute):
        mlp.recompute_activation = recompute
        mlp.zero_grad()
        x = x0.clone().requires_grad_()
        with autocast(precision):
            out, shapes = saved_shapes(lambda: mlp(x))
        out.float().square().sum().backward()
        return out, [x.grad, *(p.grad for p in mlp.parameters())], shapes

    kept, kept_grads, kept_shapes = run(False)
    out, grads, shapes = run(True)
    assert torch.equal(out, kept)
    for grad, expected in zip(grads, kept_grads, strict=True):
        assert grad.dtype == expected.dtype and torch.equal(grad, expected)
    def hidden(shapes):  # (3, 5, 64) or (15, 64): activations, not the (16, 64) weight
        return [shape for shape in shapes if shape[-1] == 64 and shape[0] != 16]

    assert len(hidden(kept_shapes)) == 2  # the activation's input and output (fc2's input)
    assert len(hidden(shapes)) == 1


def digpt_tiny(recompute=(), **train):
    recipe = tiny_recipe(**DIGPT_TINY, train={"recompute": list(recompute), **train})
    torch.manual_seed(0)
    model = build_model(resolve(recipe))
    model.recompute_in_backward(recipe.train.recompute, recipe.train.activation_checkpointing)
    return recipe, model.train()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("blocks", [False, True], ids=["", "checkpointed-blocks"])
def test_a_training_step_gives_the_same_loss_and_gradients(precision, blocks):
    images = torch.rand(4, 3, 16, 16)
    results = []
    for recompute in ((), ("mlp_activation", "attention_weights")):
        _, model = digpt_tiny(recompute, activation_checkpointing=blocks)
        with autocast(precision):
            loss = model(images, order=torch.stack([torch.randperm(4, generator=torch.Generator(
                ).manual_seed(i)) for i in range(4)])).loss
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters() if p.requires_grad]))
    (kept_loss, kept_grads), (loss, grads) = results
    assert torch.equal(loss, kept_loss)
    for grad, expected in zip(grads, kept_grads, strict=True):
        assert torch.equal(grad, expected)


def test_activation_checkpointing_recomputes_encoder_and_decoder_blocks(monkeypatch):
    from timm.models.vision_transformer import Block

    from arvision_plugins.transformer_decoder import DecoderBlock

    calls = []
    for cls in (Block, DecoderBlock):
        forward = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, *a, _f=forward, _c=cls.__name__, **kw: (
            calls.append(_c), _f(self, *a, **kw))[1])
    _, model = digpt_tiny(activation_checkpointing=True)
    model(torch.rand(4, 3, 16, 16)).loss.backward()
    assert calls.count("Block") == 2 * 2 and calls.count("DecoderBlock") == 1 * 2  # run twice


def test_set_recompute_reaches_every_layer_and_refuses_unknown_kinds():
    _, model = digpt_tiny(("attention_weights",))
    mlps = [m for m in model.modules() if isinstance(m, RecomputingMlp)]
    attentions = [m for m in model.modules() if hasattr(m, "recompute_weights")]
    assert len(mlps) == 3 and len(attentions) == 4  # 2 encoder blocks, 1 decoder block (2)
    assert not any(m.recompute_activation for m in mlps)
    assert all(m.recompute_weights for m in attentions)
    with pytest.raises(ValueError, match="train.recompute: unknown \\['gelu'\\]"):
        set_recompute(model, ["gelu"])


def test_the_memory_estimate_counts_what_is_kept():
    def per_image(recompute=(), **train):
        recipe, _ = digpt_tiny(recompute, precision="bf16", **train)
        return estimate_memory(resolve(recipe)).per_image_bytes

    kept = per_image()
    assert per_image(["mlp_activation"]) < kept
    assert per_image(["attention_weights"]) < kept
    assert per_image(activation_checkpointing=True) < kept
