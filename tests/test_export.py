"""``arvision export``: a folder plain timm loads by path (``local-dir:``), with the recipe's input
normalisation, and the single-file state dict; pushing to the Hub up to the upload itself."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from arvision.build import build_model, resolve
from arvision.checkpoint import load_checkpoint, save_checkpoint
from arvision.errors import CheckpointError
from arvision.evaluate.runner import write_results
from arvision.export import FILES, export_folder, export_state_dict
from arvision.pretrain import train
from arvision.recipe import recipe_to_dict
from conftest import run_cli, tiny_recipe

#: Normalisation that differs per channel and from timm's ImageNet default, so a folder that
#: dropped or mixed it up gives other features.
ENCODER = {"mean": [0.3, 0.5, 0.7], "std": [0.2, 0.25, 0.3]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step tiny pretraining (16x16 RGB, 4x4 patches, 2 blocks) and its recipe."""
    recipe = tiny_recipe(encoder=ENCODER)
    return train(recipe, tmp_path_factory.mktemp("pre") / "run", "tiny.toml"), recipe


def pil_images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    """What a timm user feeds: 8-bit RGB images (16x16, the encoder's input size)."""
    pixels = torch.randint(0, 256, (n, 16, 16, 3), generator=torch.Generator().manual_seed(seed))
    return [Image.fromarray(image.to(torch.uint8).numpy(), mode="RGB") for image in pixels]


def timm_features(folder, images) -> torch.Tensor:
    """``forward_features`` of ``local-dir:FOLDER``, the images prepared by timm's own data
    config resolved from the folder (input size, interpolation, crop, mean, std)."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        return model.forward_features(torch.stack([transform(image) for image in images]))


def arvision_features(checkpoint, recipe, images) -> torch.Tensor:
    """The trained encoder's final normed tokens (all blocks, bidirectional, as the probes read
    it) for the same images in [0, 1]: arvision normalises them with the recipe's mean and std."""
    model = build_model(resolve(recipe), with_tokenizer=False).eval()
    model.load_state_dict(load_checkpoint(checkpoint)["model"], strict=True)
    encoder = model.encoder
    x = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1)
                     for image in images]).float() / 255  # (B, 3, 16, 16) in [0, 1]
    with torch.no_grad():
        return encoder.vit.norm(encoder.features(x, [encoder.depth])[0])


def test_the_folder_loads_in_plain_timm_with_the_same_features(run, tmp_path, capsys):
    result, recipe = run
    out = tmp_path / "export"
    code, stdout, err = run_cli(capsys, "export", result.checkpoint, out)
    assert code == 0, err
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in stdout
    assert sorted(path.name for path in out.iterdir()) == sorted(FILES)
    assert [path.name for path in tmp_path.iterdir()] == ["export"]  # nothing left aside
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["pretrained_cfg"]["mean"] == ENCODER["mean"]
    assert config["pretrained_cfg"]["std"] == ENCODER["std"]
    assert config["model_args"]["embed_dim"] == 32 and config["model_args"]["depth"] == 2
    images = pil_images()
    expected = arvision_features(result.checkpoint, recipe, images)
    torch.testing.assert_close(timm_features(out, images), expected)
    # The same check fails when the folder carries another normalisation than the recipe's.
    config["pretrained_cfg"]["mean"] = [0.5, 0.5, 0.5]
    (out / "config.json").write_text(json.dumps(config))
    assert not torch.allclose(timm_features(out, images), expected, atol=1e-3)


def test_the_model_card_carries_recipe_data_steps_and_probe_results(run, tmp_path):
    result, _recipe = run
    card = (export_folder(result.checkpoint, tmp_path / "plain") / "README.md").read_text()
    assert card.startswith("---\ntags:\n- image-feature-extraction\n- timm\n")
    assert "library_name: timm" in card and "license: other" in card
    assert "synthetic" in card and "4 steps of batch 8" in card and "step 4" in card
    assert "mean [0.3, 0.5, 0.7], std [0.2, 0.25, 0.3]" in card
    assert '[tokenizer]\nname = "pixels"' in card  # the recipe itself
    assert "Model Comparison" not in card  # the run has no evaluation yet
    run_dir = tmp_path / "evaluated"
    shutil.copytree(result.checkpoint.parent, run_dir)
    write_results(run_dir / "eval.json", {"linear": {"top1": 61.25, "top5": 97.5, "blocks": [1],
                                                     "train_images": 64, "eval_images": 64}},
                  random_init=False)
    write_results(run_dir / "eval.json", {"linear": {"top1": 40.5, "blocks": [1]}},
                  random_init=True)
    card = (export_folder(run_dir / "checkpoint.pt", tmp_path / "evaluated_export") /
            "README.md").read_text()
    assert "| linear, blocks [1] | trained | 61.25 | 97.50 | 64 / 64 |" in card
    assert "| linear, blocks [1] | random init | 40.50 | - | - / - |" in card


def test_an_export_replaces_an_earlier_one_but_no_other_folder(run, tmp_path, capsys):
    result, _recipe = run
    out = tmp_path / "export"
    export_folder(result.checkpoint, out)
    (out / "README.md").write_text("edited")
    export_folder(result.checkpoint, out)  # an earlier export is replaced, whole
    assert (out / "README.md").read_text() != "edited"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _out, err = run_cli(capsys, "export", result.checkpoint, other)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not an exported model (no config.json)" in err
    assert [path.name for path in other.iterdir()] == ["keep.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export", "notes"]


def test_the_state_dict_format_prints_the_call_that_loads_it(run, tmp_path, capsys):
    result, recipe = run
    out = tmp_path / "encoder.pth"
    code, stdout, err = run_cli(capsys, "export", result.checkpoint, out, "--format", "state-dict")
    assert code == 0, err
    call = stdout.strip().splitlines()[-1]
    assert call == (f"timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=0, "
                    f"img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, in_chans=3, "
                    f"class_token=True, checkpoint_path={str(out)!r})")
    vit = eval(call, {"timm": timm}).eval()  # the printed call, as a user would paste it
    timm.models.load_checkpoint(vit, str(out), strict=True)  # strict, explicitly
    model = build_model(resolve(recipe)).eval()
    model.load_state_dict(load_checkpoint(result.checkpoint)["model"], strict=True)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(images),
                                   model.encoder.vit.forward_features(images), rtol=0, atol=0)


def test_the_ema_weights_export_when_the_run_kept_them(tmp_path):
    recipe = tiny_recipe(train={"steps": 2, "ema": 0.5, "precision": "fp32", "batch_size": 8})
    result = train(recipe, tmp_path / "run", "tiny.toml")
    state = load_checkpoint(result.checkpoint)
    export_state_dict(result.checkpoint, tmp_path / "ema.pth", weights="ema")
    saved = torch.load(tmp_path / "ema.pth", weights_only=True)
    torch.testing.assert_close(saved["cls_token"], state["ema"]["vit.cls_token"], rtol=0, atol=0)
    assert not torch.equal(saved["cls_token"], state["model"]["encoder.vit.cls_token"])


def test_export_of_a_tokens_stem_is_one_line(tmp_path, capsys):
    recipe = tiny_recipe(tokenizer={"name": "palette", "path": "palette.json", "num_colors": 8,
                                    "size": 6}, target={"name": "ce"}, encoder={"stem": "tokens"})
    path = tmp_path / "tokens.pt"
    save_checkpoint(path, {"model": {}, "step": 0, "recipe": recipe_to_dict(recipe)})
    with pytest.raises(CheckpointError, match=r"stem = 'tokens'"):
        export_state_dict(path, tmp_path / "x.pth")
    for argv in (["export", path, tmp_path / "x"], ["export", path, tmp_path / "x.pth", "--format",
                                                    "state-dict"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "stem = 'tokens'" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokens.pt"]


# --- the Hub -------------------------------------------------------------------------------------

def test_push_uploads_the_folder_as_written(run, tmp_path, capsys, monkeypatch):
    """Everything up to the upload is real; HfApi's two network calls record what they get."""
    from huggingface_hub import HfApi, RepoUrl, constants

    calls = []

    def create_repo(self, repo_id, **options):
        calls.append(("create_repo", repo_id, options, self.token))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **options):
        files = sorted(path.name for path in Path(folder_path).iterdir())
        calls.append(("upload_folder", repo_id, folder_path, files))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "export"
    code, stdout, err = run_cli(capsys, "export", run[0].checkpoint, out, "--push", "me/tiny-vit",
                                "--private")
    assert code == 0, err
    assert calls == [("create_repo", "me/tiny-vit", {"private": True, "exist_ok": True},
                      "hf_test_token"),
                     ("upload_folder", "me/tiny-vit", str(out), sorted(FILES))]
    assert 'timm.create_model("hf-hub:me/tiny-vit", pretrained=True)' in stdout


@pytest.mark.parametrize(("offline", "token", "repo", "message"), [
    (True, "hf_x", "me/tiny", "HF_HUB_OFFLINE is set, so nothing is uploaded"),
    (False, None, "me/tiny", "no Hugging Face token; log in with `hf auth login` or set HF_TOKEN"),
    (False, "hf_x", "tiny", "expected ORG/NAME"),
])
def test_push_without_a_way_to_the_hub_is_one_line_and_keeps_the_folder(
        run, tmp_path, capsys, monkeypatch, offline, token, repo, message):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("reached the Hub"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))  # nor a login
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "export"
    code, _out, err = run_cli(capsys, "export", run[0].checkpoint, out, "--push", repo)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert f"the export is written: {out}" in err
    assert sorted(path.name for path in out.iterdir()) == sorted(FILES)
