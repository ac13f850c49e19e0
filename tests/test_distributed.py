"""Two processes on gloo through torchrun: the same numbers as one process, and exact resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
import tomli_w
import torch

from arvision.checkpoint import load_checkpoint
from conftest import tiny_data

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def recipe(tmp_path, ordering: str = "segments", prefix_attention: bool = False, **train) -> str:
    layout = {} if ordering in ("raster", "random") else {"rows": 2, "cols": 2}
    data = tiny_data(
        ordering={"name": ordering, **layout, "prefix_attention": prefix_attention},
        decoders=[{"name": "transformer", "predicts": "next", "dim": 16, "depth": 1, "num_heads": 2},
                  {"name": "linear", "predicts": "visible"}],
        train={"batch_size": 16, "steps": 6, "base_lr": 0.05, "log_every": 1, **train},
    )
    path = tmp_path / "recipe.toml"
    path.write_text(tomli_w.dumps(data))
    return str(path)


def command(recipe_path, out, ranks, *sets):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    extra = [item for assignment in sets for item in ("--set", assignment)]
    return [*launcher, "-m", "arvision", "run", recipe_path, "--out", str(out), *extra]


def run(*args, **kwargs):
    done = subprocess.run(command(*args, **kwargs), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(out):
    return [float(line.split('"loss": ')[1].split(",")[0])
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("strategy", "ordering", "prefix"), [
    ("ddp", "segments", False), ("fsdp", "segments", False), ("ddp", "random_segments", False),
    ("fsdp", "random_segments", False), ("ddp", "random", False), ("ddp", "random", True),
])
def test_two_ranks_of_b_match_one_rank_of_2b(tmp_path, strategy, ordering, prefix):
    """Each sample's segment order (and prefix length) is drawn from its own seed, and a prefix
    loss is divided by a constant, so random orders and prefixes too give the same run on any
    number of ranks."""
    path = recipe(tmp_path, ordering, prefix, strategy=strategy)
    run(path, tmp_path / "one", 1)
    two = run(path, tmp_path / "two", 2)
    assert two.stdout.count("trained to step 6") == 1  # only rank 0 reports
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    single = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    double = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["model"]
    assert single.keys() == double.keys()
    for key, value in single.items():  # Adam turns rounding in near-zero gradients into ~lr steps
        torch.testing.assert_close(double[key], value, rtol=1e-3, atol=1e-3)


def test_two_rank_checkpoint_resumes_exactly_on_two_ranks(tmp_path):
    path = recipe(tmp_path, "random_segments", steps=60, checkpoint_every=4)
    run(path, tmp_path / "straight", 2)
    process = subprocess.Popen(command(path, tmp_path / "killed", 2), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000008.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, wherever they are
    process.wait()
    assert not (tmp_path / "killed" / "checkpoint.pt").exists(), "finished before the kill"
    resumed = run(path, tmp_path / "killed", 2)
    assert "resuming" in resumed.stdout
    expected = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    actual = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key


def test_resuming_with_another_number_of_ranks_is_refused(tmp_path):
    path = recipe(tmp_path, steps=2)
    run(path, tmp_path / "run", 2)
    done = subprocess.run(command(path, tmp_path / "run", 1, "train.steps=4"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "written by 2 processes; resume with the same number" in done.stderr


def finetune_recipe(tmp_path, strategy: str) -> str:
    """Fine-tuning from scratch without mixup or drop path, so both runs see the same batches."""
    data = tiny_data(train={"batch_size": 16, "steps": 4, "base_lr": 0.01, "log_every": 1,
                            "warmup_steps": 1, "strategy": strategy})
    for key in ("tokenizer", "ordering", "decoders", "target"):
        del data[key]
    data["finetune"] = {"mixup": 0.0, "cutmix": 0.0, "layer_decay": 0.75}
    path = tmp_path / "finetune.toml"
    path.write_text(tomli_w.dumps(data))
    return str(path)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_finetuning_on_two_ranks_matches_one_rank(tmp_path, strategy):
    path = finetune_recipe(tmp_path, strategy)
    run(path, tmp_path / "one", 1)
    two = run(path, tmp_path / "two", 2)
    assert two.stdout.count("fine-tuned (scratch): top-1") == 1  # rank 0 scores and reports
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert (tmp_path / "two" / "classifier_timm.pt").is_file()


def test_ema_with_fsdp_is_refused_before_training(tmp_path):
    path = recipe(tmp_path, strategy="fsdp", ema=0.9)
    done = subprocess.run(command(path, tmp_path / "run", 2), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode != 0  # each rank exits 2; torchrun reports the failure as 1
    assert "arvision: error: " in done.stderr
    assert "train.ema: not supported with strategy 'fsdp' yet" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
