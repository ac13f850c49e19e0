"""``encoder.init``: a pretraining that starts from an existing encoder (continued pretraining),
given as an arvision checkpoint, an exported folder or an ``hf-hub:`` name (read from a cache the
tests fill, offline)."""

import shutil

import pytest
import torch

from arvision.errors import CheckpointError, RecipeError
from arvision.plugins import get_plugins
from arvision.pretrain import build_trainer, train
from arvision.recipe import structure_recipe
from conftest import TINY, tiny_data
from teachers import EXPORT_NORMALIZATION, export_spec

ENCODER = EXPORT_NORMALIZATION


def assert_same_weights(state: dict, weights: dict) -> None:
    assert set(state) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def init_recipe(spec: str, **encoder):
    return structure_recipe(tiny_data(encoder={**ENCODER, "init": spec, **encoder}), "init.toml",
                            get_plugins())


@pytest.mark.parametrize("form", ["folder", "hf-hub", "checkpoint"])
def test_pretraining_starts_from_encoder_init(exported, hub, tmp_path, capsys, form):
    trainer = build_trainer(init_recipe(export_spec(exported, form)), tmp_path / "run", "init.toml")
    assert_same_weights(trainer.model.encoder.vit.state_dict(), exported["weights"])
    assert f"arvision: encoder starts from {export_spec(exported, form)}" in capsys.readouterr().out
    # the EMA (when kept) and the optimiser start from there too: training moves on from it
    assert trainer.ema is None and trainer.step == 0


def test_a_resumed_run_does_not_read_encoder_init_again(exported, tmp_path, capsys):
    folder = tmp_path / "init"
    shutil.copytree(exported["folder"], folder)
    recipe = init_recipe(str(folder))
    first = train(recipe, tmp_path / "run", "init.toml")
    assert "encoder starts from" in capsys.readouterr().out
    shutil.rmtree(folder)  # gone: a resume reads the run's own checkpoint
    longer = structure_recipe(tiny_data(encoder={**ENCODER, "init": str(folder)},
                                        train={**TINY["train"], "steps": 6}), "init.toml",
                              get_plugins())
    result = train(longer, tmp_path / "run", "init.toml")
    assert (first.steps, result.steps) == (4, 6)
    assert "encoder starts from" not in capsys.readouterr().out


@pytest.mark.parametrize(("encoder", "error", "message"), [
    ({"mean": [0.5]}, RecipeError, "encoder.mean: (0.5,) does not match the encoder of "
                                   "encoder.init"),
    ({"embed_dim": 48}, RecipeError, "encoder.embed_dim: 48 does not match"),
    ({"init": "gone.pt"}, CheckpointError, "encoder.init: gone.pt: checkpoint not found"),
])
def test_encoder_init_problems_are_one_line(exported, tmp_path, encoder, error, message):
    recipe = init_recipe(str(exported["folder"]), **encoder)
    with pytest.raises(error) as info:
        build_trainer(recipe, tmp_path / "run", "init.toml")
    assert message in str(info.value) and "\n" not in str(info.value)
