"""The tokenizer ``student`` (NEPA): the student's own patch embeddings, or its EMA's block
output, as targets with the gradient stopped."""

import pytest
import torch
from timm.utils import ModelEmaV3

from arvision.build import build_model, build_tokenizer, resolve
from arvision.checkpoint import load_checkpoint
from arvision.components import Tokens
from arvision.errors import RecipeError
from arvision.pretrain import build_trainer, train
from conftest import tiny_recipe

NEPA = {"tokenizer": {"name": "student"}, "target": {"name": "cosine"}}


def nepa_model(**tokenizer):
    recipe = tiny_recipe(**{**NEPA, "tokenizer": {"name": "student", **tokenizer}})
    return build_model(resolve(recipe, "tiny.toml"))


def test_targets_are_the_students_patch_embeddings_without_position():
    model = nepa_model()
    images = torch.rand(2, 3, 16, 16)
    tokens = model.tokenizer(images).tokens  # (B, 4, 4, 32)
    encoder = model.encoder
    expected = encoder.vit.patch_embed((images - encoder.mean) / encoder.std)  # (B, 16, 32)
    assert tokens.shape == (2, 4, 4, 32) and tokens.dtype == torch.float32
    torch.testing.assert_close(tokens.flatten(1, 2), expected.detach())
    assert not tokens.requires_grad
    assert model.tokens.dim == encoder.dim and not model.tokens.discrete


def test_targets_follow_the_student_as_it_learns():
    model = nepa_model()
    images = torch.rand(2, 3, 16, 16)
    before = model.tokenizer(images).tokens
    with torch.no_grad():
        model.encoder.vit.patch_embed.proj.weight.mul_(2)
    assert not torch.allclose(model.tokenizer(images).tokens, before)


def test_no_gradient_flows_through_the_targets():
    """The loss's gradient equals that with the same targets handed in as constants."""
    model = nepa_model()
    images = torch.rand(2, 3, 16, 16)
    order = torch.arange(16).expand(2, -1)
    model(images, order=order).loss.backward()
    through_tokenizer = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    constant = Tokens(model.tokenizer(images).tokens.detach().clone())
    model(images, tokens=constant, order=order).loss.backward()
    handed_in = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(through_tokenizer) == len(handed_in)
    for a, b in zip(through_tokenizer, handed_in, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [None, 1])
def test_ema_targets_are_a_block_of_the_ema_encoder(layer):
    model = nepa_model(source="ema", layer=layer)
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="'ema' reads the EMA of the encoder.*set train.ema"):
        model.tokenizer(images)
    ema = ModelEmaV3(model.encoder, decay=0.9)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(0.1)  # an EMA that differs from the student
    model.tokenizer.attach(model.encoder, ema.module)
    tokens = model.tokenizer(images).tokens  # (B, 4, 4, 32)
    (out,) = ema.module.features(images, (layer or 2,))  # (B, 1 + 16, 32)
    expected = out if layer else ema.module.vit.norm(out)
    torch.testing.assert_close(tokens.flatten(1, 2), expected[:, 1:])
    (student,) = model.encoder.features(images, (layer or 2,))
    assert not torch.allclose(tokens.flatten(1, 2), student[:, 1:])


def test_ema_source_trains_with_the_trainers_ema(tmp_path):
    recipe = tiny_recipe(tokenizer={"name": "student", "source": "ema", "normalize": True},
                         target={"name": "cosine"}, train={"steps": 3, "ema": 0.5})
    trainer = build_trainer(recipe, tmp_path / "ema", "tiny.toml")
    assert trainer.model.tokenizer._encoders["ema"] is trainer.ema.module
    result = train(recipe, tmp_path / "run", "tiny.toml")
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert load_checkpoint(result.checkpoint)["ema"] is not None


def test_ema_source_without_train_ema_is_a_recipe_error(tmp_path):
    recipe = tiny_recipe(tokenizer={"name": "student", "source": "ema"}, target={"name": "cosine"})
    with pytest.raises(RecipeError, match="tiny.toml: train.ema: tokenizer 'student' reads the "
                                          "EMA of the encoder; set train.ema"):
        build_trainer(recipe, tmp_path / "run", "tiny.toml")


@pytest.mark.parametrize(("sections", "message"), [
    ({"tokenizer": {"name": "student", "layer": 1}},
     "tiny.toml: tokenizer.layer: only for source 'ema'"),
    ({"tokenizer": {"name": "student", "source": "ema", "layer": 3}},
     r"tiny.toml: tokenizer.layer: expected a block in 1..2, got 3"),
    ({"tokenizer": {"name": "student", "source": "teacher"}},
     "tiny.toml: tokenizer.source: expected one of 'embedding', 'ema'"),
    ({"tokenizer": {"name": "student"}, "encoder": {"stem": "tokens"}},
     "tiny.toml: tokenizer: 'student' predicts the student's patch embeddings and needs their "
     "width: it works with encoder.stem = 'patch'"),
])
def test_bad_tables_are_one_line_recipe_errors(sections, message):
    with pytest.raises(RecipeError, match=message) as exc:
        build_model(resolve(tiny_recipe(**{**NEPA, **sections}), "tiny.toml"))
    assert "\n" not in str(exc.value)


def test_it_cannot_run_outside_the_model():
    """No target cache of moving targets: alone, the tokenizer has no student to read."""
    blueprint = resolve(tiny_recipe(**NEPA), "tiny.toml")
    with pytest.raises(ValueError, match="runs inside the model and cannot run alone"):
        build_tokenizer(blueprint)(torch.rand(1, 3, 16, 16))
