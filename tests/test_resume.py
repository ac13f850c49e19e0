"""Exact resume: a run killed at an arbitrary step and resumed ends bitwise equal to one that was not."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tomli_w
import torch

from arvision.checkpoint import load_checkpoint, save_checkpoint
from arvision.errors import CheckpointError, RecipeError
from arvision.plugins import get_plugins
from arvision.pretrain import train
from arvision.recipe import structure_recipe
from conftest import tiny_data

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def resume_recipe(workers: int, steps: int) -> dict:
    """Every source of randomness on: augmentation, drop path, random segment orders, EMA."""
    return tiny_data(
        data={"flip": True, "crop_scale": [0.5, 1.0], "num_workers": workers},
        encoder={"drop_path": 0.1},
        ordering={"name": "random_segments"},
        decoders=[{"name": "transformer", "predicts": "next", "dim": 16, "depth": 1,
                   "num_heads": 2}],
        target={"name": "cosine"},
        train={"steps": steps, "checkpoint_every": 5, "keep_checkpoints": 2, "ema": 0.9,
               "deterministic": True, "log_every": 50, "base_lr": 0.05},
    )


def run(recipe_path, out, wait=True):
    command = [sys.executable, "-m", "arvision", "run", str(recipe_path), "--out", str(out)]
    if wait:
        return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def kill_after(process, checkpoint, timeout=300):
    """SIGKILL the run once ``checkpoint`` exists, wherever it is then."""
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_bitwise(tmp_path, workers):
    steps = 120
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(tomli_w.dumps(resume_recipe(workers, steps)))
    straight = run(recipe_path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    process = run(recipe_path, tmp_path / "killed", wait=False)
    code = kill_after(process, tmp_path / "killed" / "checkpoints" / "step_00000010.pt")
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()
    resumed = run(recipe_path, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    resumed_from = re.search(r"resuming .* from step (\d+)", resumed.stdout)
    assert resumed_from and 10 <= int(resumed_from[1]) < steps, resumed.stdout

    expected = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    actual = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert actual["step"] == expected["step"] == steps
    assert "encoder.vit.blocks.0.attn.qkv.weight" in expected["model"]  # not empty alike
    assert "vit.blocks.0.attn.qkv.weight" in expected["ema"]
    for part in ("model", "ema"):
        assert actual[part].keys() == expected[part].keys(), part
        for key, value in expected[part].items():
            assert torch.equal(actual[part][key], value), f"{part}.{key} differs"
    assert actual["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    assert expected["optimizer"]["state"]
    for index, state in expected["optimizer"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(actual["optimizer"]["state"][index][moment], state[moment])


def test_accumulation_matches_one_large_batch(tmp_path, monkeypatch):
    from arvision.model import ARModel

    forwards = []  # images per forward pass
    model_forward = ARModel.forward

    def counted(self, images, *args, **kwargs):
        forwards.append(images.shape[0])
        return model_forward(self, images, *args, **kwargs)

    monkeypatch.setattr(ARModel, "forward", counted)
    base = tiny_data(ordering={"name": "segments", "rows": 2, "cols": 2},
                     train={"steps": 4, "batch_size": 32, "base_lr": 0.05, "log_every": 1})
    one = train(structure_recipe(base, "one", get_plugins()), tmp_path / "one")
    assert forwards == [32] * 4
    forwards.clear()
    base["train"]["micro_batch"] = 8
    four = train(structure_recipe(base, "four", get_plugins()), tmp_path / "four")
    assert forwards == [8] * 16  # 4 steps of 4 micro-batches
    assert four.losses == pytest.approx(one.losses, rel=1e-5)
    norms = [[json.loads(line)["grad_norm"] for line in (tmp_path / run / "metrics.jsonl")
              .read_text().splitlines()] for run in ("one", "four")]
    assert len(norms[0]) == 4 and norms[1] == pytest.approx(norms[0], rel=1e-4)  # mean, not sum
    left = load_checkpoint(one.checkpoint)["model"]
    right = load_checkpoint(four.checkpoint)["model"]
    for key, value in left.items():
        torch.testing.assert_close(right[key], value, rtol=1e-4, atol=1e-5)


def test_batch_size_must_split_into_micro_batches(tmp_path):
    recipe = structure_recipe(tiny_data(train={"batch_size": 12, "micro_batch": 8}), "x.toml", get_plugins())
    with pytest.raises(RecipeError, match="train.batch_size: 12 is not a multiple of micro_batch 8"):
        train(recipe, tmp_path / "run", "x.toml")


def test_resuming_with_another_recipe_is_refused(tmp_path):
    train(structure_recipe(tiny_data(train={"steps": 2}), "x.toml", get_plugins()), tmp_path / "run")
    changed = structure_recipe(tiny_data(train={"steps": 4, "base_lr": 0.5}), "x.toml", get_plugins())
    with pytest.raises(RecipeError, match="train.base_lr: 0.5 differs from the run being resumed"):
        train(changed, tmp_path / "run", "x.toml")
    longer = train(structure_recipe(tiny_data(train={"steps": 4}), "x.toml", get_plugins()), tmp_path / "run")
    assert longer.steps == 4 and len(longer.losses) == 2  # steps 3 and 4 only


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "step.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_truncated_latest_checkpoint_is_named(tmp_path):
    recipe = structure_recipe(tiny_data(train={"steps": 4, "checkpoint_every": 2}), "x.toml", get_plugins())
    train(recipe, tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step_00000004.pt: unreadable checkpoint"):
        train(recipe, tmp_path / "run")


def test_steps_logged_past_the_resumed_checkpoint_are_logged_once(tmp_path):
    """A run killed after logging steps its last checkpoint does not hold (here: the step-4
    checkpoint removed, and a line torn mid-write) runs those steps again; metrics.jsonl then
    holds each step once, with the values of the uninterrupted run."""
    recipe = structure_recipe(tiny_data(train={"steps": 4, "checkpoint_every": 2, "log_every": 1}),
                              "log.toml", get_plugins())
    train(recipe, tmp_path / "whole")
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text()
             .splitlines()]
    train(recipe, tmp_path / "killed")
    for name in ("checkpoint.pt", "checkpoints/step_00000004.pt"):
        (tmp_path / "killed" / name).unlink()
    with (tmp_path / "killed" / "metrics.jsonl").open("a") as log:
        log.write('{"step": 5, "lo')  # torn
    train(recipe, tmp_path / "killed")
    again = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [row["step"] for row in again] == [1, 2, 3, 4]
    assert [row["loss"] for row in again] == [row["loss"] for row in whole]
