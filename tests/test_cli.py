"""The command line: help texts, `check --json` geometry of the shipped recipes, fit-palette."""

import json

import pytest
import torch

from arvision_plugins.colour_palette import load_palette, quantize
from conftest import REPO, run_cli

# command -> words its help must show (a description and its main options)
HELP = {
    ("run",): ["Pretrain (or fine-tune) as RECIPE says", "resolved recipe", "[finetune] table",
               "RECIPE", "--set", "--out"],
    ("check",): ["Validate RECIPE", "meta device", "FLOPs", "fine-tuning", "--set", "--json"],
    ("eval", "finetune"): ["Full fine-tuning", "Layer-wise lr decay", "--recipe", "--set", "--out"],
    ("export",): ["Write the encoder of CKPT", 'local-dir:OUT", pretrained=True', "hf-hub:ORG/NAME",
                  "--format", "--push", "--weights"],
    ("plugins",): ["List every plugin", "ARVISION_DISABLE_PLUGIN_AUTOLOAD", "ARVISION_BLOCK_PLUGINS",
                   "--json"],
    ("tokenizer", "fit-palette"): ["k-means colour palette", "--source", "--colors", "--size",
                                   "--pixels", "--seed"],
    ("tokenizer",): ["fit-palette"],
    (): ["Autoregressive visual pretraining", "run", "check", "plugins", "tokenizer"],
}


@pytest.mark.parametrize(("command", "words"), HELP.items(), ids=[" ".join(c) or "top" for c in HELP])
def test_help(capsys, monkeypatch, command, words):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, *command, "--help")
    assert code == 0, err
    assert out.startswith(f"Usage: arvision {' '.join(command)}".rstrip()), out
    for word in words:
        assert word in out, f"{word!r} not in help of {command}"


def test_no_arguments_shows_help(capsys):
    code, out, err = run_cli(capsys)
    assert "Usage: arvision" in out + err
    assert "check" in out + err
    assert code in (0, 2)


def test_unknown_command_is_a_usage_error(capsys):
    code, out, err = run_cli(capsys, "trian")
    assert code == 2
    assert "trian" in err
    assert "Traceback" not in out + err


def check_json(capsys, monkeypatch, recipe: str, *args: str) -> dict:
    monkeypatch.chdir(REPO)  # recipes name palettes relative to the repository root
    code, out, err = run_cli(capsys, "check", recipe, "--json", *args)
    assert code == 0, err
    return json.loads(out)


def assert_costs_positive(summary: dict) -> None:
    params = summary["parameters"]
    assert params["encoder"] > 0 and params["total"] > 0
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    flops = summary["flops_per_image"]
    assert flops["forward"] > 0
    assert flops["train_step"] > flops["forward"]
    assert summary["train_state_bytes"] == 16 * params["total"]


def test_check_aim_pixels_recipe(capsys, monkeypatch):
    summary = check_json(capsys, monkeypatch, "recipes/aim_pixels_fmnist.toml")
    assert summary["student_grid"] == [7, 7]
    assert summary["tokenizer"] == {"name": "pixels", "grid": [7, 7], "kind": "features", "dim": 16,
                                    "cls": False}
    assert summary["ordering"]["name"] == "raster"
    assert summary["ordering"]["segments"] == 49
    assert summary["encoder_tokens"] == 49
    assert summary["targets_per_decoder"] == 48
    assert summary["encoder"]["img_size"] == 28 and summary["encoder"]["patch_size"] == 4
    assert summary["encoder"]["depth"] == 6 and summary["encoder"]["dim"] == 128
    assert [d["key"] for d in summary["decoders"]] == ["linear_next"]
    assert_costs_positive(summary)


def test_check_igpt_pixel_recipe(capsys, monkeypatch):
    summary = check_json(capsys, monkeypatch, "recipes/igpt_pixel_fmnist.toml")
    assert summary["student_grid"] == [14, 14]
    assert summary["tokenizer"]["grid"] == [14, 14]
    assert summary["tokenizer"]["kind"] == "ids" and summary["tokenizer"]["dim"] == 16
    assert summary["ordering"]["segments"] == 196
    assert summary["encoder_tokens"] == 196
    assert summary["targets_per_decoder"] == 195
    assert summary["encoder"]["stem"] == "tokens" and summary["encoder"]["patch_size"] == 1
    assert_costs_positive(summary)


def test_check_cost_grows_with_depth(capsys, monkeypatch):
    base = check_json(capsys, monkeypatch, "recipes/aim_pixels_fmnist.toml")
    deeper = check_json(capsys, monkeypatch, "recipes/aim_pixels_fmnist.toml", "--set", "encoder.depth=12")
    assert deeper["encoder"]["depth"] == 12
    assert deeper["parameters"]["encoder"] > base["parameters"]["encoder"]
    assert deeper["flops_per_image"]["forward"] > base["flops_per_image"]["forward"]
    assert deeper["encoder_tokens"] == base["encoder_tokens"]


def test_check_table_output(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, "check", "recipes/aim_pixels_fmnist.toml")
    assert code == 0, err
    assert "recipes/aim_pixels_fmnist.toml: OK" in out
    assert "7x7 tokens" in out
    assert "49 segments" in out
    assert "48 per decoder per image" in out


def test_fit_palette_synthetic(tmp_path, capsys):
    out_file = tmp_path / "pal" / "palette.json"
    out_file.parent.mkdir()
    code, out, err = run_cli(capsys, "tokenizer", "fit-palette", str(out_file), "--source", "synthetic",
                             "--colors", "4", "--size", "8", "--pixels", "2000")
    assert code == 0, err
    assert f"wrote {out_file}: 4 colours x 3 channels" in out
    colours, meta = load_palette(out_file)
    assert tuple(colours.shape) == (4, 3)
    assert torch.isfinite(colours).all()
    assert colours.min() >= -1 and colours.max() <= 1
    assert len({tuple(row.tolist()) for row in colours}) == 4  # four distinct colours
    assert meta["source"] == "synthetic" and meta["size"] == 8 and meta["pixels"] == 2000
    # Each centre quantises to itself.
    assert torch.equal(quantize(colours, colours), torch.arange(4))


def test_fit_palette_rejects_an_unknown_source(tmp_path, capsys):
    code, _, err = run_cli(capsys, "tokenizer", "fit-palette", str(tmp_path / "p.json"), "--source",
                           "imagenet", "--colors", "4")
    assert code == 2
    assert "imagenet" in err
    assert "Traceback" not in err
    assert not (tmp_path / "p.json").exists()
