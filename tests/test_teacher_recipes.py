"""The teacher recipes (recipes/teachers/) and the VQ-KD recipe (recipes/tokenizers/) fit together:
each validates, and what each teacher run writes loads into the teacher the VQ-KD recipe names."""

import tomllib

import attrs
import pytest
import tomli_w
import torch

from arvision.build import build_model, resolve
from arvision.finetune.model import create_classifier
from arvision.finetune.recipe import load_finetune_recipe
from arvision.recipe import load_recipe, recipe_to_dict, save_recipe
from arvision_plugins.timm_teacher import TimmTeacher
from arvision_plugins.vqkd_recipe import load_vqkd_recipe, resolve_vqkd
from conftest import REPO, run_cli

SUPERVISED = REPO / "recipes" / "teachers" / "supervised_fmnist.toml"
SELFSUP = REPO / "recipes" / "teachers" / "selfsup_fmnist.toml"
VQKD = REPO / "recipes" / "tokenizers" / "vqkd_fmnist.toml"


@pytest.fixture
def vqkd(plugins):
    return load_vqkd_recipe(VQKD, plugins=plugins)


def teacher_of(vqkd, checkpoint) -> TimmTeacher:
    """The VQ-KD recipe's teacher, reading ``checkpoint`` instead of the recipe's file."""
    table = vqkd.vqkd.teacher
    config = attrs.evolve(table.config, checkpoint=str(checkpoint))
    return table.registration.factory(config, resolve_vqkd(vqkd).image)


def test_the_supervised_teachers_classifier_is_what_the_vqkd_teacher_loads(tmp_path, vqkd):
    recipe = load_finetune_recipe(SUPERVISED)
    assert recipe.finetune.checkpoint is None  # trained from scratch
    assert vqkd.vqkd.teacher.config.checkpoint == \
        f"{recipe.run.out_dir}/classifier_timm.pt"
    classifier = create_classifier(recipe, 10, str(SUPERVISED))
    torch.save(classifier.state_dict(), tmp_path / "classifier_timm.pt")  # as finetune writes it
    teacher = teacher_of(vqkd, tmp_path / "classifier_timm.pt")  # strict load
    assert torch.equal(teacher.vit.blocks[5].mlp.fc2.weight, classifier.blocks[5].mlp.fc2.weight)
    # the encoder's own normalisation, which the teacher must repeat
    assert teacher.config.mean == recipe.encoder.mean and teacher.config.std == recipe.encoder.std
    tokens = teacher(torch.rand(2, 1, 32, 32)).tokens
    assert tokens.shape == (2, *resolve_vqkd(vqkd).grid, 128)


def test_the_selfsup_teachers_checkpoint_is_what_the_vqkd_teacher_loads(tmp_path, vqkd, plugins):
    recipe = load_recipe(SELFSUP, plugins=plugins)
    model = build_model(resolve(recipe, str(SELFSUP)))
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pt")  # an arvision run's
    teacher = teacher_of(vqkd, tmp_path / "checkpoint.pt")
    assert torch.equal(teacher.vit.pos_embed, model.encoder.vit.pos_embed)
    assert teacher.config.mean == recipe.encoder.mean and teacher.config.std == recipe.encoder.std


@pytest.mark.parametrize("path", [SUPERVISED, SELFSUP], ids=lambda p: p.name)
def test_teacher_recipes_load_back_equal(tmp_path, plugins, path):
    if "[finetune]" in path.read_text():
        recipe = load_finetune_recipe(path)
        saved = tmp_path / "recipe.toml"
        saved.write_text(tomli_w.dumps(recipe_to_dict(recipe)))
        assert load_finetune_recipe(saved) == recipe
        return
    recipe = load_recipe(path, plugins=plugins)
    save_recipe(recipe, tmp_path / "recipe.toml")
    assert load_recipe(tmp_path / "recipe.toml", plugins=plugins) == recipe


def test_recipes_say_what_they_are_and_how_to_train_them():
    for path, command in ((SUPERVISED, "arvision run recipes/teachers/supervised_fmnist.toml"),
                          (SELFSUP, "arvision run recipes/teachers/selfsup_fmnist.toml"),
                          (VQKD, "arvision tokenizer train-vqkd recipes/tokenizers/vqkd_fmnist.toml")):
        text = path.read_text()
        header = text[: text.index("\n[")]
        assert command in header and "Paper role" in header and "output" in header, path.name
        assert "measured" in header, path.name  # its time and result on a named machine
        out_dir = tomllib.loads(text)["run"]["out_dir"]
        assert out_dir in header, path.name


def test_vqkd_recipe_checks(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(REPO)
    code, stdout, stderr = run_cli(capsys, "check", VQKD.relative_to(REPO))
    assert code == 0, stderr
    assert "512 x 32" in stdout and "8x8" in stdout and "32 px x 1 ch" in stdout
