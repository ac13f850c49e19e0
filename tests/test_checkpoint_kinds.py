"""Commands that read a pretraining's encoder refuse another run's checkpoint (a VQ-KD tokenizer's,
a fine-tuning's) in one line that names its kind, before they read its recipe."""

import pytest

from arvision.checkpoint import save_checkpoint
from conftest import TINY, run_cli

#: What a VQ-KD and a fine-tuning run keep: their own recipes, which no pretraining reader knows.
OTHER_RUNS = {
    "vqkd": {"vqkd": {"teacher": {"name": "timm"}}, "data": TINY["data"]},
    "finetune": {**TINY, "finetune": {"checkpoint": "pre/checkpoint.pt"}},
}


@pytest.fixture(params=sorted(OTHER_RUNS))
def other_run(request, tmp_path):
    path = tmp_path / f"{request.param}.pt"
    save_checkpoint(path, {"kind": request.param, "recipe": OTHER_RUNS[request.param],
                           "model": {}, "step": 3})
    return request.param, path


@pytest.mark.parametrize(("argv", "purpose"), [
    (("eval", "knn"), "probing"),
    (("export",), "CKPT"),  # the argument, as export names it in its errors
    (("eval", "finetune"), "fine-tuning"),
])
def test_another_runs_checkpoint_is_one_line_naming_its_kind(other_run, argv, purpose, tmp_path,
                                                             capsys):
    kind, path = other_run
    extra = ("--out", tmp_path / "out") if argv[0] != "export" else (tmp_path / "out",)
    code, _out, err = run_cli(capsys, *argv, path, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"not a pretraining checkpoint but a {kind} run's" in lines[0] and str(path) in lines[0]
    assert purpose in lines[0]


def test_a_file_without_recipe_and_weights_is_one_line(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    save_checkpoint(path, {"step": 3})  # an arvision checkpoint file with nothing to rebuild
    code, _out, err = run_cli(capsys, "eval", "knn", path, "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"{path}: not a pretraining checkpoint (no recipe and model weights" in lines[0]
