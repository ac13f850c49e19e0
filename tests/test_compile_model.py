"""train.compile = "model": the whole forward under torch.compile gives eager's losses and
gradients; the recipe key's modes and its old booleans."""

import attrs
import pytest
import torch

from arvision.build import build_model, resolve
from arvision.components import EncoderOutput, Prediction, Tokens
from arvision.engine import fit
from arvision.model import ModelOutput
from arvision.plan import Plan, SegmentLayout
from arvision.pretrain import build_trainer, train
from conftest import tiny_recipe

#: A segment plan, a CLS token and D-iGPT's transformer decoder: every part of the forward.
SEGMENTS = {"ordering": {"name": "segments", "rows": 2, "cols": 2},
            "encoder": {"class_token": True},
            "decoders": [{"name": "transformer", "predicts": "next", "dim": 16, "depth": 1,
                          "num_heads": 2}]}
PREFIX = {**SEGMENTS, "ordering": {"name": "segments", "rows": 2, "cols": 2,
                                   "prefix_attention": True}}


@pytest.mark.parametrize(("given", "mode"), [(True, "blocks"), (False, "none"),
                                             ("none", "none"), ("blocks", "blocks"),
                                             ("model", "model")])
def test_compile_key_takes_modes_and_the_old_booleans(given, mode):
    assert tiny_recipe(train={"compile": given}).train.compile == mode


def test_forward_classes_build_inside_a_full_graph():
    """Each attrs class a forward builds is built by traced code, and stays frozen."""
    layout = SegmentLayout(2, 2)

    def build(x: torch.Tensor):
        plan = Plan(layout, x.long() % 4, prefix_length=torch.ones_like(x[:, 0]).long())
        tokens = Tokens(x, x[:, 0])
        memory = EncoderOutput(x * 2, (x,), 0)
        prediction = Prediction(memory.last + plan.order, tokens.cls)
        return ModelOutput(prediction.tokens.sum(), {"part": prediction.tokens.mean()})

    x = torch.arange(8.0).view(2, 4)
    out = torch.compile(build, fullgraph=True, backend="eager")(x)
    assert out.loss.item() == pytest.approx(build(x).loss.item())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        out.loss = 0


def loss_and_grads(model: torch.nn.Module, images: torch.Tensor, seeds: torch.Tensor):
    model.zero_grad()
    output = model(images, seeds=seeds)
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in model.named_parameters()
                    if p.grad is not None}


@pytest.mark.parametrize("sections", [SEGMENTS, PREFIX], ids=["segments-cls", "prefix"])
def test_whole_model_traces_to_eager_losses_and_gradients(sections):
    """Dynamo and AOT autograd alone (no inductor, seconds): the traced forward and backward of
    the whole model equal eager's."""
    torch.manual_seed(0)
    model = build_model(resolve(tiny_recipe(**sections)))
    images, seeds = torch.rand(4, 3, 16, 16), torch.arange(4)
    eager, eager_grads = loss_and_grads(model, images, seeds)
    model.compile(backend="aot_eager")
    traced, traced_grads = loss_and_grads(model, images, seeds)
    assert traced.loss.item() == pytest.approx(eager.loss.item(), rel=1e-5)
    assert traced.parts.keys() == eager.parts.keys()
    assert traced_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(traced_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def model_compiled_run(tmp_path_factory):
    """Three steps with train.compile 'none' and 'model' (inductor): (eager losses, compiled
    losses, the compiled trainer)."""
    def recipe(mode: str):
        return tiny_recipe(**SEGMENTS, train={"steps": 3, "base_lr": 0.05, "compile": mode})

    out = tmp_path_factory.mktemp("compile_model")
    eager = train(recipe("none"), out / "eager")
    trainer = build_trainer(recipe("model"), out / "compiled", "tiny.toml")
    compiled = fit(trainer)
    return eager.losses, compiled.losses, trainer


@pytest.mark.slow  # inductor compiles the forward and backward: about a minute on two cores
def test_compiled_model_trains_like_eager(model_compiled_run):
    eager, compiled, trainer = model_compiled_run
    assert trainer.model._compiled_call_impl is not None  # Module.compile(): in place
    assert len(compiled) == 3 and compiled[-1] != compiled[0]
    assert compiled == pytest.approx(eager, rel=1e-4)


@pytest.mark.slow
def test_compiled_model_gives_eager_gradients_and_keeps_its_names(model_compiled_run):
    *_, trainer = model_compiled_run
    compiled = trainer.model
    eager = build_model(resolve(trainer.recipe))
    eager.load_state_dict(compiled.state_dict())  # no "_orig_mod." prefix: checkpoints unchanged
    images, seeds = torch.rand(8, 3, 16, 16), torch.arange(8)
    expected, expected_grads = loss_and_grads(eager.train(), images, seeds)
    got, grads = loss_and_grads(compiled.train(), images, seeds)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
