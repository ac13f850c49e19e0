"""A quiet, readable command line: no library warnings a user cannot act on, data workers capped
at the cores there are, weights checked before any worker starts, `arvision plugins` at 80
columns."""

import logging
import os
import subprocess
import sys

import pytest

from arvision.data import loader
from arvision.engine.optim import make_scheduler
from arvision.errors import CheckpointError
from arvision.plugins import PluginInfo, get_plugins
from arvision.pretrain import build_trainer
from arvision.recipe import TrainConfig
from conftest import REPO, require_fashion_mnist, run_cli, tiny_recipe


def test_the_quickstart_says_only_what_arvision_says(tmp_path):
    """The quickstart recipe, shortened, through the CLI as a user runs it (workers above the
    cores included): every line on stderr is arvision's own, and none is a library warning."""
    require_fashion_mnist()
    workers = len(os.sched_getaffinity(0)) + 2
    sets = ["train.steps=2", "train.batch_size=32", "data.limit=128", "eval.limit=128",
            "eval.eval_limit=64", f"data.num_workers={workers}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "arvision", "run", REPO / "recipes" / "quickstart.toml",
                           *[arg for item in sets for arg in ("--set", item)], "--out", tmp_path / "qs"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    output = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in output if "Warning" in line or "warn" in line.lower()], output
    assert all(line.startswith(("arvision: ", "step ")) for line in proc.stderr.splitlines()), \
        proc.stderr
    assert f"arvision: data.num_workers = {workers} is more than the" in proc.stderr
    assert "results:" in proc.stdout


def test_a_warmup_over_the_whole_run_logs_nothing(caplog):
    """timm's 'Cosine annealing scheduler will have no effect' (a short run, a fine-tuning
    shortened with --set train.epochs) is filtered where timm logs it."""
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level(logging.INFO):
        make_scheduler(optimizer, TrainConfig(warmup_steps=50), steps=3, steps_per_epoch=3)
    assert caplog.records == []


def test_data_workers_above_the_cores_are_capped_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(loader, "available_cores", lambda: 2)
    loader._say_capped.cache_clear()
    assert [loader.worker_count(n) for n in (0, 2, 10, 10, 12)] == [0, 2, 2, 2, 2]
    assert capsys.readouterr().err.splitlines() == [
        "arvision: data.num_workers = 10 is more than the 2 CPU cores available; using 2",
        "arvision: data.num_workers = 12 is more than the 2 CPU cores available; using 2"]


@pytest.mark.parametrize("recipe", [
    {"tokenizer": {"name": "timm", "model": "vit_tiny_patch16_224", "img_size": 16,
                   "patch_size": 4, "checkpoint": "missing/teacher.pt"},
     "target": {"name": "cosine"}},
    {"encoder": {"init": "missing/checkpoint.pt"}},
], ids=["teacher", "encoder.init"])
def test_missing_weights_stop_the_run_before_the_data_loader(tmp_path, monkeypatch, recipe):
    def no_loader(*args, **kwargs):
        pytest.fail("the data loader was built before the weights were read")

    monkeypatch.setattr("arvision.pretrain.run.build_batches", no_loader)
    with pytest.raises(CheckpointError, match="missing/"):
        build_trainer(tiny_recipe(data={"num_workers": 2}, **recipe), tmp_path / "run", "r.toml")


def test_plugins_fit_80_columns_without_cutting_a_name(monkeypatch, capsys):
    plugins = get_plugins()
    error = "RuntimeError: " + "the plugin could not import its optional dependency " * 3
    broken = PluginInfo("broken", "broken-arvision-plugin", "0.3", {}, error.strip())
    monkeypatch.setattr("arvision.cli.plugins_command.get_plugins",
                        lambda: type(plugins)(plugins.manager, plugins.registries,
                                              [*plugins.infos, broken]))
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0, err
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in out, out
    for info in plugins.infos:
        for kind, names in info.registers.items():
            for name in names:  # one row per component, every name whole
                assert any(line.split()[:3] == [kind, name, info.name] for line in lines), name
    assert "broken-arvision-plugin" in out and "optional dependency" in out
    assert " ".join(out.split()).count(error.strip()) == 1  # wrapped, not cut
