"""The D-iGPT recipes: the paper's geometry from config, checked without downloads."""

import json

import pytest
import torch

from arvision.build import resolve
from arvision.cli import main
from arvision.plugins import get_plugins
from arvision.recipe import load_recipe
from arvision.summary import summarize
from conftest import REPO


def summary_of(name: str, *overrides: str) -> dict:
    path = REPO / "recipes" / f"{name}.toml"
    return summarize(resolve(load_recipe(path, list(overrides), plugins=get_plugins()), str(path)))


@pytest.mark.parametrize(("name", "depth", "width", "encoder_params"), [
    ("digpt_clip_vitb", 12, 768, 85.6e6), ("digpt_clip_vitl", 24, 1024, 303.1e6)])
def test_clip_recipes_have_the_papers_geometry(name, depth, width, encoder_params):
    summary = summary_of(name)
    assert summary["student_grid"] == [14, 14]
    assert summary["tokenizer"] == {"name": "clip", "grid": [16, 16], "kind": "features",
                                    "dim": 1024, "cls": True}
    assert summary["ordering"] == {"name": "random_segments", "segments": 4, "layout": [2, 2],
                                   "student_tokens_per_segment": 49,
                                   "target_tokens_per_segment": 64}
    assert summary["encoder_tokens"] == 148  # 3 visible segments x 49 + CLS
    assert summary["targets_per_decoder"] == 193  # 3 predicted segments x 64 + CLS
    assert summary["encoder"]["depth"] == depth and summary["encoder"]["dim"] == width
    assert summary["parameters"]["encoder"] == pytest.approx(encoder_params, rel=0.01)
    assert [d["key"] for d in summary["decoders"]] == ["generative", "discriminative"]


def test_beit_tokens_recipe_predicts_8192_codes_on_the_student_grid():
    summary = summary_of("beit_tokens_vitb")
    assert summary["tokenizer"]["grid"] == [14, 14] and summary["tokenizer"]["dim"] == 8192
    assert summary["ordering"]["target_tokens_per_segment"] == 49
    assert summary["targets_per_decoder"] == 147  # no CLS target


def test_check_prints_the_vitl_geometry(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(REPO / "recipes" / "digpt_clip_vitl.toml"), "--json"])
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoder_tokens"] == 148 and summary["targets_per_decoder"] == 193


def test_run_without_imagenet_fails_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(REPO / "recipes" / "digpt_clip_vitl.toml")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "data.root" in lines[0] and "/data/imagenet21k/train" in lines[0]


@pytest.mark.parametrize(("rows", "message"), [
    (3, "ordering: a 14x14 grid cannot be split into 3x3 equal segments"),
    (7, "ordering: 7x7 segments do not divide the tokenizer grid 16x16"),
])
def test_segments_that_do_not_divide_a_grid_are_a_recipe_error(rows, message):
    from arvision.errors import RecipeError

    with pytest.raises(RecipeError, match=message):
        summary_of("digpt_clip_vitb", f"ordering.rows={rows}", f"ordering.cols={rows}")


@pytest.mark.parametrize(("name", "pretraining", "depth", "epochs", "layer_decay", "drop_path"), [
    ("finetune_digpt_clip_vitb", "digpt_clip_vitb", 12, 100, 0.65, 0.1),
    ("finetune_digpt_clip_vitl", "digpt_clip_vitl", 24, 50, 0.75, 0.2)])
def test_finetune_recipes_follow_the_protocol_and_fit_their_pretraining(
        capsys, name, pretraining, depth, epochs, layer_decay, drop_path):
    from arvision.finetune import load_finetune_recipe
    from arvision.finetune.model import create_classifier
    from arvision.model.pretrained import check_fits, recipe_encoder

    path = REPO / "recipes" / f"{name}.toml"
    recipe = load_finetune_recipe(path)
    tune, train = recipe.finetune, recipe.train
    assert tune.checkpoint == f"runs/{pretraining}/checkpoint.pt"
    assert (tune.layer_decay, recipe.encoder.drop_path, train.epochs) == (layer_decay, drop_path,
                                                                          epochs)
    assert (tune.mixup, tune.cutmix, tune.label_smoothing, tune.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert tune.auto_augment == "rand-m9-mstd0.5-inc1" and tune.global_pool == "avg"
    assert (train.warmup_epochs, train.base_lr, train.weight_decay) == (5, 1e-4, 0.05)
    pretrain = load_recipe(REPO / "recipes" / f"{pretraining}.toml", plugins=get_plugins())
    with torch.device("meta"):
        classifier = create_classifier(recipe, 1000, str(path))
    # raises on any differing key
    check_fits(recipe_encoder(pretrain, tune.checkpoint), recipe.encoder, classifier, str(path),
               "finetune.checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(path), "--json"])
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoder"]["depth"] == depth and summary["num_classes"] == 1000
    assert summary["encoder"]["img_size"] == 224 and summary["pool"] == "avg"
