"""The training loop: a falling loss, what a run writes, and the divergence guard."""

import json
import math

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.checkpoint import load_checkpoint, save_checkpoint
from arvision.errors import CheckpointError
from arvision.recipe import load_recipe, structure_recipe
from arvision.train import DivergedError, train
from conftest import REPO, require_fashion_mnist, tiny_recipe


def _mean(values):
    return sum(values) / len(values)


def test_tiny_run_learns_and_writes_its_outputs(tmp_path):
    recipe = tiny_recipe(train={"steps": 40, "base_lr": 0.05, "warmup_steps": 5,
                                "precision": "bf16", "log_every": 10})
    result = train(recipe, tmp_path / "run", "tiny.toml")
    assert result.steps == 40 and len(result.losses) == 40
    assert _mean(result.losses[-5:]) < 0.8 * _mean(result.losses[:5])

    resolved = load_recipe(tmp_path / "run" / "recipe.toml")
    assert resolved == recipe
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30, 40]
    assert {"loss", "loss/linear_next", "lr", "grad_norm", "images_per_s"} <= set(lines[0])
    assert any((tmp_path / "run" / "tensorboard").iterdir())

    state = load_checkpoint(result.checkpoint)
    assert state["step"] == 40
    model = build_model(resolve(structure_recipe(state["recipe"], "ckpt"), "ckpt"))
    model.load_state_dict(state["model"])  # strict


def test_epochs_set_the_step_count_when_steps_is_unset(tmp_path):
    recipe = tiny_recipe(train={"steps": None, "epochs": 1.5, "batch_size": 16})
    assert recipe.train.steps is None
    result = train(recipe, tmp_path / "run")
    assert result.steps == 6  # 64 images / 16 per batch = 4 steps per epoch


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    from arvision_plugins.targets import MSETarget

    def poisoned(self, prediction, target):
        return (prediction.float() - target).pow(2).mean(-1) * float("nan")

    monkeypatch.setattr(MSETarget, "loss", poisoned)
    with pytest.raises(DivergedError, match=r"step 1: non-finite loss nan \(linear_next nan\)"):
        train(tiny_recipe(), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}, "step": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: unreadable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not an arvision checkpoint"):
        load_checkpoint(foreign)
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["igpt_pixel_fmnist", "aim_pixels_fmnist", "digpt_fmnist"])
def test_real_fashion_mnist_run_loss_falls(name, tmp_path, monkeypatch):
    require_fashion_mnist()
    monkeypatch.chdir(REPO)  # recipes name their palette relative to the repository
    recipe = load_recipe(REPO / "recipes" / f"{name}.toml",
                         ["train.steps=120", "train.warmup_steps=20", "train.log_every=40"])
    result = train(recipe, tmp_path / name, f"{name}.toml")
    assert _mean(result.losses[-10:]) < 0.85 * _mean(result.losses[:10])


def test_skip_nonfinite_skips_bad_steps_then_stops(tmp_path, monkeypatch):
    from arvision_plugins.targets import MSETarget

    calls = {"n": 0}
    original = MSETarget.loss

    def sometimes_nan(self, prediction, target):
        calls["n"] += 1
        loss = original(self, prediction, target)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(MSETarget, "loss", sometimes_nan)
    result = train(tiny_recipe(train={"steps": 5, "skip_nonfinite": 2}), tmp_path / "skip")
    assert result.steps == 5 and sum(map(math.isnan, result.losses)) == 2
    calls["n"] = 0
    with pytest.raises(DivergedError, match=r"step 3: non-finite loss .*train.skip_nonfinite = 1"):
        train(tiny_recipe(train={"steps": 5, "skip_nonfinite": 1}), tmp_path / "stop")


def test_ema_follows_the_encoder(tmp_path):
    result = train(tiny_recipe(train={"steps": 3, "ema": 0.5, "base_lr": 0.05}), tmp_path / "ema")
    state = load_checkpoint(result.checkpoint)
    ema, live = state["ema"], state["model"]
    key = "vit.blocks.0.attn.qkv.weight"
    assert ema[key].shape == live[f"encoder.{key}"].shape
    assert not torch.equal(ema[key], live[f"encoder.{key}"])


@pytest.mark.slow
def test_quickstart_pretrains_then_compares_with_random_init(tmp_path, monkeypatch, capsys):
    """The README's first command at a reduced size: results.json holds both encoders' probes."""
    from arvision.cli import main

    require_fashion_mnist()
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "recipes/quickstart.toml", "--out", str(tmp_path / "quick"),
              "--set", "train.steps=30", "--set", "data.limit=2000", "--set", "eval.limit=1000",
              "--set", "eval.eval_limit=500"])
    assert exit_info.value.code in (0, None)
    results = json.loads((tmp_path / "quick" / "results.json").read_text())
    for encoder in ("pretrained", "random_init"):
        for probe in ("linear", "knn"):
            assert 10 < results[encoder][probe]["top1"] <= 100, (encoder, probe)
    assert results["reference"] == {"name": "logistic regression on raw pixels", "top1": 84.2}
    shown = capsys.readouterr().out
    assert "pretrained top-1" in shown and "logistic regression on raw pixels" in shown


def test_compiled_blocks_train(tmp_path):
    result = train(tiny_recipe(train={"steps": 2, "compile": True}), tmp_path / "compiled")
    assert result.steps == 2 and all(math.isfinite(loss) for loss in result.losses)


def test_activation_checkpointing_gives_the_same_steps(tmp_path):
    plain = train(tiny_recipe(train={"steps": 3, "base_lr": 0.05}), tmp_path / "plain")
    recomputed = train(tiny_recipe(train={"steps": 3, "base_lr": 0.05,
                                          "activation_checkpointing": True}), tmp_path / "ckpt")
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-5)


def test_fp16_on_cpu_is_a_recipe_error(tmp_path):
    from arvision.errors import RecipeError

    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    with pytest.raises(RecipeError, match="train.precision: 'fp16' needs CUDA"):
        train(tiny_recipe(train={"precision": "fp16"}), tmp_path / "fp16")
