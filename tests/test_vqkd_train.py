"""VQ-KD training on the engine: a tiny run, the tokenizer it writes, exact resume, the CLI."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import attrs
import pytest
import tomli_w
import torch

from arvision.checkpoint import load_checkpoint
from arvision.components import ImageSpec
from arvision.errors import CheckpointError
from arvision.plugins import load_plugins
from arvision_plugins.vqkd import VQKDConfig, VQKDTokenizer
from arvision_plugins.vqkd_recipe import resolve_vqkd, structure_vqkd_recipe
from arvision_plugins.vqkd_train import build_model, train_vqkd
from conftest import run_cli, tiny_data
from teachers import TINY_VIT, write_vit_checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def vqkd_data(teacher, **sections) -> dict:
    """A tiny VQ-KD recipe: 32 px synthetic images, 8 px patches (4x4 codes), 16 codes of 8-d,
    the tiny timm ViT of ``teacher`` (a checkpoint path) as teacher."""
    data = {
        "run": {"name": "tiny_vqkd"},
        "data": {"source": "synthetic", "synthetic": {"num_images": 64, "image_size": 32}},
        "encoder": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "vqkd": {"num_codes": 16, "code_dim": 8, "decoder_depth": 1, "dead_after": 3,
                 "usage_window": 4,
                 "teacher": {"name": "timm", "checkpoint": str(teacher), **TINY_VIT}},
        "train": {"batch_size": 8, "steps": 6, "base_lr": 1e-3, "precision": "fp32",
                  "log_every": 1},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return data


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_vit_checkpoint(tmp_path_factory.mktemp("teacher") / "vit.pt")


@pytest.fixture(scope="module")
def trained(teacher, tmp_path_factory):
    """A 6-step run: (its recipe, its output directory, the result)."""
    out = tmp_path_factory.mktemp("vqkd")
    recipe = structure_vqkd_recipe(vqkd_data(teacher), "tiny.toml", load_plugins())
    return recipe, out, train_vqkd(recipe, out, "tiny.toml")


def write(path, data):
    path.write_text(tomli_w.dumps(data))
    return path


def test_training_logs_losses_and_uses_many_codes(trained):
    _recipe, out, result = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    last = records[-1]
    assert {"loss", "loss/rec", "loss/quant", "codebook/used", "codebook/perplexity",
            "codebook/restarted"} <= last.keys()
    assert last["loss"] == pytest.approx(last["loss/rec"] + last["loss/quant"], rel=1e-5)
    assert all(r["codebook/used"] > 1 and r["codebook/perplexity"] > 1 for r in records)
    assert 1 < result.used <= 16
    assert any((out / "tensorboard").iterdir())
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["kind"] == "vqkd" and state["step"] == 6
    assert not any(key.startswith("teacher.") for key in state["model"])  # rebuilt, not saved
    assert int(state["model"]["quantize.batches"]) == 6 and bool(state["model"]["quantize.initted"])


def test_the_tokenizer_loads_strictly_at_its_own_sizes(trained):
    recipe, out, result = trained
    table = tomllib.loads((out / "tokenizer.toml").read_text())["tokenizer"]
    assert table == result.table and table["checkpoint"] == str(out / "vqkd.pth")
    assert (table["num_codes"], table["code_dim"], table["embed_dim"], table["depth"]) == (16, 8, 32, 1)
    config = VQKDConfig(**{key: value for key, value in table.items() if key != "name"})
    tokenizer = VQKDTokenizer(config, ImageSpec(32, 3, 8))
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = tokenizer(images).tokens
    assert ids.shape == (5, 4, 4) and int(ids.min()) >= 0 and int(ids.max()) < 16
    # the same ids as the trained model itself gives
    model = build_model(recipe, resolve_vqkd(recipe), teacher=None)
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    assert torch.equal(ids, model.eval().tokenize(images))
    # a recipe at other sizes is told which keys to set
    with pytest.raises(CheckpointError, match=r"set tokenizer.num_codes = 16 \(not 8192\)"):
        VQKDTokenizer(attrs.evolve(config, num_codes=8192), ImageSpec(32, 3, 8))


def test_cli_trains_and_the_tokenizer_serves_a_pretraining(tmp_path, capsys, teacher):
    grey = {"synthetic": {"num_images": 64, "image_size": 32, "channels": 1}}
    recipe = write(tmp_path / "vqkd.toml", vqkd_data(teacher, data=grey, train={"steps": 3}))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "tokenizer", "train-vqkd", recipe, "--out", out)
    assert code == 0, stderr
    assert "trained to step 3" in stdout and "codes used" in stdout and "vqkd.pth" in stdout
    table = tomllib.loads((out / "tokenizer.toml").read_text())["tokenizer"]
    assert table["in_chans"] == 1  # grey images: a grey encoder
    pretrain = write(tmp_path / "pretrain.toml", tiny_data(
        data=grey,
        encoder={"img_size": 32, "patch_size": 8}, tokenizer=table, target={"name": "ce"},
        ordering={"name": "raster"}, train={"steps": 2, "precision": "fp32"}))
    code, stdout, stderr = run_cli(capsys, "run", pretrain, "--out", tmp_path / "pre")
    assert code == 0, stderr
    assert "trained to step 2" in stdout
    # a second call finds the run finished and writes the tokenizer again
    code, stdout, _ = run_cli(capsys, "tokenizer", "train-vqkd", recipe, "--out", out)
    assert code == 0 and "already finished 3 steps" in stdout


def test_check_shows_a_vqkd_recipe_and_run_points_to_its_command(tmp_path, capsys, monkeypatch,
                                                                 teacher):
    monkeypatch.setenv("COLUMNS", "200")  # rich: no wrapped lines
    recipe = write(tmp_path / "vqkd.toml", vqkd_data(teacher))
    for argv in (("check", recipe), ("tokenizer", "train-vqkd", recipe, "--check")):
        code, stdout, stderr = run_cli(capsys, *argv, "--set", "vqkd.num_codes=12")
        assert code == 0, stderr
        assert "OK (VQ-KD tokenizer)" in stdout and "12 x 8" in stdout and "4x4" in stdout
    assert not (tmp_path / "runs").exists()
    code, _, stderr = run_cli(capsys, "run", recipe)
    assert code == 2 and "arvision tokenizer train-vqkd" in stderr and len(stderr.splitlines()) == 1


def test_the_tokenizer_group_holds_both_plugins_commands(capsys):
    code, stdout, _ = run_cli(capsys, "tokenizer", "--help")
    assert code == 0 and "fit-palette" in stdout and "train-vqkd" in stdout


BAD = [
    ({"vqkd": {"num_codez": 3}}, "vqkd.num_codez: unknown key"),
    ({"vqkd": {"num_codes": "8"}}, "vqkd.num_codes: expected int"),
    ({"vqkd": {"decay": 1.5}}, "vqkd.decay: expected a number in [0, 1]"),
    ({"vqkd": {"decoder_heads": 3}}, "vqkd.decoder_heads: 3 does not divide the decoder width 32"),
    ({"vqkd": {"teacher": {"name": "timn"}}}, "vqkd.teacher.name: unknown tokenizer 'timn'"),
    ({"vqkd": {"teacher": {"name": "palette", "path": "p.json"}}}, "'palette' gives ids"),
    ({"vqkd": {"teacher": {"name": "timm", **TINY_VIT, "img_size": 16}}}, "its grid 2x2 differs"),
    ({"encoder": {"patch_size": 5}}, "encoder.patch_size: 5 does not divide the image size 32"),
    ({"encoder": {"depth": 0}}, "encoder.depth: expected a number > 0"),
    ({"train": {"ema": 0.99}}, "train.ema: VQ-KD training keeps no EMA"),
    ({"data": {"targets": "cache.lmdb"}}, "data.targets:"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_recipes_are_one_line_errors(tmp_path, capsys, teacher, change, message):
    data = vqkd_data(teacher)
    for key, value in change.items():
        data[key] = {**data[key], **value}
    recipe = write(tmp_path / "bad.toml", data)
    code, stdout, stderr = run_cli(capsys, "tokenizer", "train-vqkd", recipe, "--check")
    assert code == 2, stdout
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith(f"arvision: error: {recipe}: ") and message in stderr, stderr


def test_missing_tables_and_too_few_vectors_for_kmeans(tmp_path, capsys, teacher):
    data = vqkd_data(teacher)
    del data["vqkd"]["teacher"]
    code, _, stderr = run_cli(capsys, "tokenizer", "train-vqkd", write(tmp_path / "a.toml", data))
    assert code == 2 and "vqkd.teacher: required key is missing" in stderr
    plain = write(tmp_path / "b.toml", tiny_data())
    code, _, stderr = run_cli(capsys, "tokenizer", "train-vqkd", plain)
    assert code == 2 and "not a VQ-KD recipe (expected a [vqkd] table" in stderr
    many = write(tmp_path / "c.toml", vqkd_data(teacher, vqkd={"num_codes": 200}))
    code, _, stderr = run_cli(capsys, "tokenizer", "train-vqkd", many, "--out", tmp_path / "c")
    assert code == 2 and "vqkd.num_codes: k-means starts 200 codes from the first batch, which " \
        "holds only 128 vectors" in stderr
    assert not (tmp_path / "c" / "checkpoints").exists()


# ---------------------------------------------------------------- exact resume after a kill


def _cli(recipe, out, wait=True):
    command = [sys.executable, "-m", "arvision", "tokenizer", "train-vqkd", str(recipe),
               "--out", str(out)]
    if wait:
        return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def test_killed_run_resumes_bitwise(tmp_path, teacher):
    steps = 40
    data = vqkd_data(teacher, data={"flip": True, "crop_scale": [0.5, 1.0]},
                     encoder={"drop_path": 0.1}, vqkd={"dead_after": 2, "usage_window": 3},
                     train={"steps": steps, "checkpoint_every": 5, "deterministic": True,
                            "log_every": 50, "base_lr": 0.05})
    recipe = write(tmp_path / "recipe.toml", data)
    straight = _cli(recipe, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    process = _cli(recipe, tmp_path / "killed", wait=False)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000010.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = _cli(recipe, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    found = re.search(r"resuming .* from step (\d+)", resumed.stdout)
    assert found and 10 <= int(found[1]) < steps, resumed.stdout

    expected = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    actual = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert actual["step"] == expected["step"] == steps
    assert int(expected["model"]["quantize.started"].max()) > 0, "no code was restarted"
    assert expected["model"].keys() == actual["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), f"model.{key} differs"
    for index, state in expected["optimizer"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(actual["optimizer"]["state"][index][moment], state[moment])
    for name in ("vqkd.pth", "tokenizer.toml"):
        assert (tmp_path / "killed" / name).exists()
    assert copy.deepcopy(expected["recipe"]) == actual["recipe"]


# ---------------------------------------------------------------- two ranks on gloo


def _torchrun(recipe, out, ranks, *sets):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    extra = [item for assignment in sets for item in ("--set", assignment)]
    done = subprocess.run([*launcher, "-m", "arvision", "tokenizer", "train-vqkd", str(recipe),
                           "--out", str(out), *extra], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_share_one_codebook(tmp_path, teacher):
    """Codebook statistics are summed over ranks: 2 ranks of 4 images update the codes as 1 rank
    of 8 does; k-means and restarts give every rank the same codes (FSDP, which does not
    broadcast buffers, then logs what DDP, which does, logs)."""
    recipe = write(tmp_path / "recipe.toml", vqkd_data(teacher, train={"steps": 5}))
    plain = ("vqkd.kmeans_init=false", "vqkd.dead_after=100")
    one = _torchrun(recipe, tmp_path / "one", 1, *plain)
    two = _torchrun(recipe, tmp_path / "two", 2, *plain)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    codes = [load_checkpoint(tmp_path / run / "checkpoint.pt")["model"]["quantize.codebook"]
             for run in ("one", "two")]
    torch.testing.assert_close(codes[1], codes[0], rtol=1e-3, atol=1e-3)
    restarts = ("vqkd.dead_after=1", "vqkd.num_codes=64")
    ddp = _torchrun(recipe, tmp_path / "ddp", 2, *restarts)
    fsdp = _torchrun(recipe, tmp_path / "fsdp", 2, *restarts, "train.strategy=fsdp")
    assert sum(r["codebook/restarted"] for r in ddp) > 0
    for key in ("loss", "codebook/used", "codebook/perplexity", "codebook/restarted"):
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in ddp], rel=1e-4), key
