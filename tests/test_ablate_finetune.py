"""``arvision ablate`` on fine-tuning recipes: each run fine-tunes a classifier and is scored by its
top-1 (finetune_top1), a pretrained start against a from-scratch one (``unset`` removes the
base's checkpoint) with a claim, the same
numbers as ``arvision run`` of the report's recipe, the dry run's step count, and the errors of an
ablation that mixes kinds."""

import csv
import json
from pathlib import Path

import pytest
import tomli_w

from arvision.pretrain import train
from conftest import TINY, run_cli, tiny_recipe

#: A tiny fine-tuning base recipe: conftest.TINY's encoder and synthetic data, fp32; its
#: finetune.checkpoint is set by the fixture.
BASE = {
    "run": {"name": "tune"},
    "finetune": {"mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "auto_augment": "none",
                 "eval_crop": 1.0, "layer_decay": 0.75},
    "data": {**TINY["data"], "crop_scale": [0.5, 1.0]},
    "encoder": {**TINY["encoder"], "drop_path": 0.0},
    "train": {"batch_size": 16, "epochs": 2, "warmup_steps": 1, "base_lr": 0.01,
              "precision": "fp32", "log_every": 1, "checkpoint_every": 4},
}

ABLATION = '''base = "base.toml"
seeds = [0, 1]
reference = "scratch"

[[variants]]
name = "pretrained"

[[variants]]
name = "scratch"
unset = ["finetune.checkpoint"]
set = { "finetune.layer_decay" = 1.0 }

[launcher]
threads = 1

[[claims]]
text = "pretraining helps fine-tuning"
better = "pretrained"
worse = "scratch"
metrics = ["finetune_top1"]
'''


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("finetune_ablation")
    checkpoint = train(tiny_recipe(), directory / "pretrain").checkpoint
    base = {**BASE, "finetune": {**BASE["finetune"], "checkpoint": str(checkpoint)}}
    (directory / "base.toml").write_text(tomli_w.dumps(base))
    path = directory / "ablation.toml"
    path.write_text(ABLATION)
    return path


@pytest.fixture(scope="module")
def finished(ablation) -> Path:
    from arvision.cli import main

    out = ablation.parent / "out"
    try:
        main(["ablate", str(ablation), "--out", str(out), "--jobs", "2"])
    except SystemExit as exc:
        assert not exc.code
    return out


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as file:
        return list(csv.DictReader(file))


def test_finetune_ablation_scores_each_classifier_and_tests_the_claim(finished):
    found = rows(finished)
    assert len(found) == 4 and {row["status"] for row in found} == {"finished"}
    steps = 2 * (64 // 16)  # epochs x full batches of the 64 synthetic images
    for row in found:
        assert 0 <= float(row["finetune_top1"]) <= 100 and row["steps"] == str(steps)
        assert "linear_top1" not in row and row["train_flops"]
        run = finished / "runs" / row["run"]
        entry = json.loads((run / "eval.json").read_text())["finetune"]
        assert entry["top1"] == float(row["finetune_top1"])
        assert entry["init"] == ("pretrained" if row["variant"] == "pretrained" else "scratch")
        assert (run / "classifier_timm.pt").is_file()
    report = (finished / "report.md").read_text()
    assert "4 of 4 runs finished" in report and "fine-tunes the encoder as a classifier" in report
    assert "random init (base encoder)" not in report and "raw pixels" not in report
    score = {(row["variant"], row["seed"]): float(row["finetune_top1"]) for row in found}
    gaps = [score["pretrained", seed] - score["scratch", seed] for seed in "01"]
    verdict = "held" if min(gaps) > 0 else "reversed" if max(gaps) < 0 else "not separated"
    assert (f"| pretraining helps fine-tuning | pretrained | scratch | finetune_top1 | "
            f"{sum(gaps) / 2:.2f} [{min(gaps):.2f}, {max(gaps):.2f}] | {verdict} |") in report


def test_the_report_recipe_run_again_gives_the_same_score(finished, tmp_path, capsys):
    row = next(row for row in rows(finished) if row["variant"] == "pretrained")
    recipe = finished / "recipes" / f"{row['run']}.toml"
    code, _, err = run_cli(capsys, "run", str(recipe), "--out", str(tmp_path / "again"))
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "eval.json").read_text())["finetune"]
    assert again["top1"] == float(row["finetune_top1"])


def test_dry_run_counts_the_steps_of_an_epoch_recipe(ablation, tmp_path, capsys):
    code, out, err = run_cli(capsys, "ablate", str(ablation), "--out", str(tmp_path / "fresh"),
                             "--dry-run")
    assert code == 0, err
    assert "4 of 4 runs to do" in out and "measured by timing steps of " in out
    assert out.count("scratch ") >= 2 and " 8 " in out  # 2 epochs x 4 batches
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("extra, message", [
    ("[eval]\nprobes = ['knn']\n", "eval: a fine-tuning ablation scores each classifier on "
                                   "data.eval_split"),
    ("[[claims]]\ntext = 'x'\nbetter = 'pretrained'\nworse = 'scratch'\n"
     "metrics = ['linear_top1']\n", "claims.1.metrics: 'linear_top1' is not measured (expected "
                                    "one of: finetune_top1)"),
])
def test_finetune_ablation_errors_are_one_line(ablation, tmp_path, capsys, extra, message):
    path = ablation.parent / "bad.toml"
    path.write_text(ablation.read_text() + extra)
    code, _, err = run_cli(capsys, "ablate", str(path), "--out", str(tmp_path), "--dry-run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_an_ablation_cannot_mix_pretraining_and_finetuning(tmp_path, capsys):
    (tmp_path / "base.toml").write_text(tomli_w.dumps(TINY))
    path = tmp_path / "mixed.toml"
    path.write_text('base = "base.toml"\n[[variants]]\nname = "probe"\n[[variants]]\n'
                    'name = "tuned"\nset = { finetune = { mixup = 0.0 } }\n')
    code, _, err = run_cli(capsys, "ablate", str(path), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "variant tuned: expected no [finetune] table, as the base recipe has" in err


def test_unset_of_a_key_the_recipe_lacks_is_one_line(ablation, tmp_path, capsys):
    path = ablation.parent / "missing.toml"
    path.write_text(ablation.read_text().replace('unset = ["finetune.checkpoint"]',
                                                 'unset = ["finetune.checkpont"]'))
    code, _, err = run_cli(capsys, "ablate", str(path), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "variant scratch: unset: finetune.checkpont: not in the recipe" in err


def test_check_of_a_finetune_recipe_counts_flops_and_steps(tmp_path, capsys):
    path = tmp_path / "tune.toml"
    path.write_text(tomli_w.dumps(BASE))
    code, out, err = run_cli(capsys, "check", path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 8  # 2 epochs x 4 full batches of 16 of the 64 images
    flops = summary["flops_per_image"]  # the backward costs about twice the forward
    assert flops["forward"] > 0 and 2.5 * flops["forward"] < flops["train_step"] < 3.5 * flops["forward"]
    code, out, err = run_cli(capsys, "check", path)
    assert code == 0 and "FLOPs / image" in out and "optimiser steps" in out
