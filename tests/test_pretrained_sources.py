"""Exported folders, ``local-dir:`` and ``hf-hub:`` names wherever an encoder is read: the timm
teacher (``tokenizer.checkpoint``) and ``[finetune] checkpoint`` (``encoder.init``:
test_encoder_init.py).

Hub names are read through huggingface_hub's real download path, from a cache the tests fill in
the Hub's layout (``models--ORG--NAME/snapshots/REV``, ``refs/main``) while HF_HUB_OFFLINE=1.
"""

import json

import pytest
import timm
import tomli_w
import torch

from arvision.errors import RecipeError
from arvision.finetune import build_finetuner, structure_finetune_recipe
from arvision.model.timm_folder import read_timm_folder
from arvision_plugins.timm_teacher import TimmTeacher, TimmTeacherConfig
from conftest import TINY, run_cli, tiny_data
from teachers import EXPORT_NORMALIZATION, EXPORT_REPO, export_spec

ENCODER = EXPORT_NORMALIZATION
SHAPE = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def assert_same_weights(state: dict, weights: dict) -> None:
    assert set(state) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("form", ["folder", "local-dir", "hf-hub"])
def test_timm_reads_the_same_model_arvision_reads(exported, hub, form):
    spec = export_spec(exported, form)
    folder = read_timm_folder(spec, "key")
    assert folder.architecture == "vit_tiny_patch16_224"
    assert folder.model_args == {**SHAPE, "in_chans": 3, "class_token": True}
    assert folder.stat("mean") == (0.3, 0.5, 0.7)
    assert_same_weights(folder.weights(), exported["weights"])
    name = spec if spec.startswith(("hf-hub:", "local-dir:")) else f"local-dir:{spec}"
    assert_same_weights(timm.create_model(name, pretrained=True).state_dict(), exported["weights"])


# --- the timm teacher ----------------------------------------------------------------------------

def teacher_tokens(config: TimmTeacherConfig, images: torch.Tensor):
    from arvision.components import ImageSpec

    teacher = TimmTeacher(config, ImageSpec(size=16, channels=3, patch_size=4))
    return teacher(images), teacher


@pytest.mark.parametrize("form", ["folder", "local-dir", "hf-hub"])
def test_a_timm_teacher_reads_a_folder_or_hub_name_without_naming_the_architecture(
        exported, hub, form):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference, _ = teacher_tokens(TimmTeacherConfig(
        model="vit_tiny_patch16_224", checkpoint=str(exported["checkpoint"]), **SHAPE,
        mean=tuple(ENCODER["mean"]), std=tuple(ENCODER["std"]), precision="fp32"), images)
    # model, the overrides, mean and std all come from config.json
    tokens, teacher = teacher_tokens(TimmTeacherConfig(checkpoint=export_spec(exported, form),
                                                       precision="fp32"), images)
    assert teacher.mean.flatten().tolist() == pytest.approx(ENCODER["mean"])
    torch.testing.assert_close(tokens.tokens, reference.tokens, rtol=0, atol=0)
    torch.testing.assert_close(tokens.cls, reference.cls, rtol=0, atol=0)


@pytest.mark.parametrize(("tokenizer", "message"), [
    ({"model": "vit_small_patch16_224"}, "tokenizer.model: 'vit_small_patch16_224' is not the "
                                         "architecture of"),
    ({"checkpoint": "hf-hub:arv/absent"}, "hf-hub:arv/absent is not in the local Hugging Face "
                                          "cache"),
    ({"checkpoint": "local-dir:/nowhere"}, "local-dir:/nowhere is not a folder"),
    ({}, "tokenizer.model: required unless tokenizer.checkpoint is a folder"),
])
def test_teacher_folder_problems_are_one_line_before_training(exported, hub, tmp_path, capsys,
                                                              tokenizer, message):
    table = {"name": "timm", "checkpoint": str(exported["folder"]), **tokenizer}
    if not tokenizer:
        del table["checkpoint"]
    path = tmp_path / "teacher.toml"
    path.write_text(tomli_w.dumps(tiny_data(tokenizer=table, target={"name": "cosine"})))
    code, _out, err = run_cli(capsys, "check", path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


# --- fine-tuning ---------------------------------------------------------------------------------

def finetune_recipe(spec: str, **encoder):
    tables = {"run": {"name": "tune"}, "data": TINY["data"],
              "encoder": {**TINY["encoder"], **ENCODER, **encoder},
              "finetune": {"checkpoint": spec, "mixup": 0.0, "cutmix": 0.0},
              "train": {"batch_size": 8, "steps": 2, "precision": "fp32", "log_every": 1}}
    return structure_finetune_recipe(tables, "tune.toml")


@pytest.mark.parametrize("form", ["folder", "hf-hub", "checkpoint"])
def test_finetuning_starts_from_a_folder_a_hub_name_or_a_checkpoint(exported, hub, tmp_path, form):
    trainer, loaded = build_finetuner(finetune_recipe(export_spec(exported, form)), tmp_path, "tune.toml")
    assert loaded["checkpoint"] == export_spec(exported, form)
    state = trainer.model.vit.state_dict()
    expected = {key: value for key, value in exported["weights"].items()
                if not key.startswith("norm.")}  # average pooling: fc_norm (new) replaces norm
    assert_same_weights({key: state[key] for key in expected}, expected)


@pytest.mark.parametrize(("encoder", "message"), [
    ({"depth": 3}, "encoder.depth: 3 does not match the encoder of finetune.checkpoint"),
    ({"mean": [0.5]}, "encoder.mean: (0.5,) does not match the encoder of finetune.checkpoint"),
])
def test_a_finetune_recipe_that_describes_another_encoder_is_one_line(exported, tmp_path, encoder,
                                                                      message):
    with pytest.raises(RecipeError) as info:
        build_finetuner(finetune_recipe(str(exported["folder"]), **encoder), tmp_path, "tune.toml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_eval_finetune_of_a_folder_asks_for_a_recipe(exported, capsys):
    code, _out, err = run_cli(capsys, "eval", "finetune", exported["folder"])
    assert code == 2 and "pass --recipe with a [finetune] table" in err
    assert len(err.strip().splitlines()) == 1


def test_check_shows_where_a_finetuning_starts(exported, tmp_path, capsys):
    for spec, shown in ((str(exported["folder"]), f"{exported['folder']}, its model weights"),
                        (f"hf-hub:{EXPORT_REPO}", f"hf-hub:{EXPORT_REPO}, its model weights"),
                        ("gone/export", "gone/export (not found yet), its model weights")):
        path = tmp_path / "tune.toml"
        tables = {"finetune": {"checkpoint": spec}, "run": {"name": "tune"}, "data": TINY["data"],
                  "encoder": TINY["encoder"]}
        path.write_text(tomli_w.dumps(tables))
        code, out, err = run_cli(capsys, "check", path, "--json")
        assert code == 0, err
        assert json.loads(out)["starts_from"] == shown
