"""The ablation file: expansion into runs, the order of overrides, identities, and every bad file
as one line naming the file, the variant and the key, exit 2, with nothing run or written."""

import copy
from pathlib import Path

import pytest
import tomli_w

from arvision.ablate.plan import identity, make_plan
from arvision.ablate.spec import load_ablation, set_path
from arvision.errors import RecipeError
from conftest import REPO, TINY, require_fashion_mnist, run_cli

GEN_AND_DISC = [{"name": "linear", "predicts": "next"}, {"name": "linear", "predicts": "visible"}]


def write(tmp_path: Path, text: str, base: dict | None = None) -> Path:
    """An ablation file ``text`` beside a base recipe (the tiny one unless ``base``)."""
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base if base is not None else TINY))
    path = tmp_path / "ablation.toml"
    path.write_text(text)
    return path


GRID = '''base = "base.toml"
seeds = [0, 1]
[set]
"train.steps" = 6
[axes]
"ordering.name" = ["raster", "random"]
[[variants]]
name = "mse"
[[variants]]
name = "gen-and-disc"
[variants.set]
"train.steps" = 8
[[variants.set.decoders]]
name = "linear"
predicts = "next"
[[variants.set.decoders]]
name = "linear"
predicts = "visible"
'''


def test_variants_times_axes_times_seeds_in_file_order(tmp_path):
    ablation = load_ablation(write(tmp_path, GRID))
    assert [(run.label, run.seed) for run in ablation.runs] == [
        ("mse ordering.name=raster", 0), ("mse ordering.name=raster", 1),
        ("mse ordering.name=random", 0), ("mse ordering.name=random", 1),
        ("gen-and-disc ordering.name=raster", 0), ("gen-and-disc ordering.name=raster", 1),
        ("gen-and-disc ordering.name=random", 0), ("gen-and-disc ordering.name=random", 1)]
    first, last = ablation.runs[0].data, ablation.runs[-1].data
    assert first["train"]["steps"] == 6 and first["decoders"] == TINY["decoders"]
    assert last["decoders"] == GEN_AND_DISC  # a whole array of tables replaced
    assert last["train"]["steps"] == 8 and last["train"]["seed"] == 1
    assert last["train"]["batch_size"] == TINY["train"]["batch_size"]  # the rest kept
    assert last["ordering"] == {"name": "random"}
    assert ablation.reference == "mse ordering.name=raster"


def test_no_axes_and_no_variants_is_the_base_alone(tmp_path):
    base = copy.deepcopy(TINY)
    base["eval"] = {"probes": ["knn"]}
    base["run"]["out_dir"] = "elsewhere"
    ablation = load_ablation(write(tmp_path, 'base = "base.toml"\n', base))
    (run,) = ablation.runs
    assert run.label == "base" and run.seed == 0
    assert "eval" not in run.data and "out_dir" not in run.data["run"]  # the ablation decides


def test_command_line_set_comes_after_the_variants(tmp_path):
    ablation = load_ablation(write(tmp_path, GRID), ["train.steps=3"])
    assert {run.data["train"]["steps"] for run in ablation.runs} == {3}
    assert ablation.baseline_data["train"]["steps"] == 3


def test_set_path_follows_the_set_semantics():
    data = {"train": {"steps": 1}, "decoders": [{"name": "linear"}]}
    set_path(data, "train.steps", 5, "here")
    set_path(data, "decoders.0.weight", 0.5, "here")
    set_path(data, "data.synthetic.num_images", 8, "here")  # missing tables are created
    value = [1, 2]
    set_path(data, "encoder.taps", value, "here")
    value.append(3)  # a copy was stored
    assert data == {"train": {"steps": 5}, "decoders": [{"name": "linear", "weight": 0.5}],
                    "data": {"synthetic": {"num_images": 8}}, "encoder": {"taps": [1, 2]}}
    with pytest.raises(RecipeError, match=r"^here: train\.steps is a value, not a table$"):
        set_path(data, "train.steps.x", 1, "here")
    with pytest.raises(RecipeError, match=r"^here: decoders\.3: expected an index below 1$"):
        set_path(data, "decoders.3.weight", 1, "here")


def test_identity_ignores_names_and_logging_but_not_what_is_computed(tmp_path):
    plan = make_plan(load_ablation(write(tmp_path, GRID)), tmp_path / "out", threads=1)
    record = plan.runs[0].record
    same = copy.deepcopy(record)
    same["run"]["name"] = "other"
    same["train"]["log_every"] = 99
    same["train"]["checkpoint_every"] = 3
    assert identity(same, 1) == identity(record, 1) == plan.runs[0].identity
    changed = copy.deepcopy(record)
    changed["train"]["base_lr"] = 0.5
    assert identity(changed, 1) != identity(record, 1)
    assert identity(record, 2) != identity(record, 1)  # bf16 results depend on the threads
    assert len({run.identity for run in plan.runs}) == 8  # seeds differ
    assert plan.runs[0].directory == tmp_path / "out" / "runs" / \
        f"mse-ordering.name=raster-seed0-{plan.runs[0].identity[:8]}"
    assert plan.runs[0].costs["parameters"] > 0 and plan.runs[0].costs["flops_train_step"] > 0


BAD = {
    "unknown recipe key in [set]": (
        'base = "base.toml"\n[set]\n"train.stepz" = 3\n',
        r"ablation\.toml: variant base: train\.stepz: unknown key"),
    "unknown recipe key in a variant": (
        'base = "base.toml"\n[[variants]]\nname = "a"\n[[variants]]\nname = "b"\n'
        'set = { "encoder.widht" = 3 }\n',
        r"ablation\.toml: variant b: encoder\.widht: unknown key"),
    "axis value of the wrong type": (
        'base = "base.toml"\n[axes]\n"train.steps" = [4, "ten"]\n',
        r"ablation\.toml: variant base train\.steps=ten: train\.steps: expected int, got 'ten'"),
    "recipe that cannot build": (
        'base = "base.toml"\n[[variants]]\nname = "wide-patch"\nset = { "encoder.patch_size" = 5 }\n',
        r"ablation\.toml: variant wide-patch: tokenizer\.patch_size 5 does not divide the image"),
    "unknown component": (
        'base = "base.toml"\n[axes]\n"ordering.name" = ["raster", "spiralz"]\n',
        r"ablation\.toml: variant base ordering\.name=spiralz: ordering\.name: .*spiralz"),
    "unknown ablation key": (
        'base = "base.toml"\nseedz = [1]\n', r"ablation\.toml: seedz: unknown key"),
    "axis not a list": (
        'base = "base.toml"\n[axes]\n"ordering.name" = "raster"\n',
        r'ablation\.toml: axes\."ordering\.name": expected a non-empty list of values'),
    "repeated seeds": (
        'base = "base.toml"\nseeds = [1, 1]\n', r"ablation\.toml: seeds: expected a non-empty list"),
    "missing base": ('seeds = [0]\n', r"ablation\.toml: base: required key is missing"),
    "base file not found": (
        'base = "nope.toml"\n', r"ablation\.toml: base: .*nope\.toml: recipe file not found"),
    "two variants with one name": (
        'base = "base.toml"\n[[variants]]\nname = "a"\n[[variants]]\nname = "a"\n',
        r"ablation\.toml: variants: two variants are named 'a'"),
    "a variant without a name": (
        'base = "base.toml"\n[[variants]]\nset = {}\n',
        r"ablation\.toml: variants\[0\]\.name: required key is missing"),
    "a path through a value": (
        'base = "base.toml"\n[[variants]]\nname = "v"\nset = { "train.steps.x" = 1 }\n',
        r"ablation\.toml: variant v: set: train\.steps is a value, not a table"),
    "a bad eval key": (
        'base = "base.toml"\n[eval]\nprobes = ["linear", "svm"]\n',
        r"ablation\.toml: eval\.probes\[1\]: expected one of"),
    "a bad launcher value": (
        'base = "base.toml"\n[launcher]\ngpus_per_node = "two"\n',
        r"ablation\.toml: launcher\.gpus_per_node: expected int"),
    "an unknown reference": (
        'base = "base.toml"\nreference = "nope"\n', r"ablation\.toml: reference: 'nope' is not"),
    "invalid TOML": ('base = \n', r"ablation\.toml: invalid TOML"),
    "a claim about an unknown variant": (
        'base = "base.toml"\n[[claims]]\ntext = "t"\nbetter = "base"\nworse = "nope"\n',
        r"ablation\.toml: claims\.0\.worse: 'nope' is not a variant label \(labels: 'base'\)"),
    "a claim on a metric not measured": (
        'base = "base.toml"\n[[claims]]\ntext = "t"\nbetter = "base"\nworse = "base"\n'
        'metrics = ["attentive_top1"]\n',
        r"ablation\.toml: claims\.0\.metrics: 'attentive_top1' is not measured \(expected one "
        r"of: linear_top1, knn_top1\)"),
    "a claim without its text": (
        'base = "base.toml"\n[[claims]]\nbetter = "base"\nworse = "base"\n',
        r"ablation\.toml: claims\[0\]\.text: required key is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_ablation_file_is_one_line_exit_2_and_nothing_runs(tmp_path, capsys, case):
    import re

    text, pattern = BAD[case]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "ablate", write(tmp_path, text), "--out", out)
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arvision: error: "), stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in stderr
    assert not out.exists()  # nothing ran, nothing was written


def test_a_bad_command_line_set_names_the_variant(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "ablate", write(tmp_path, GRID), "--out", tmp_path / "out",
                              "--set", "train.steps.x=1")
    assert code == 2
    assert "ablation.toml: variant mse ordering.name=raster: --set 'train.steps.x=1': " \
        "train.steps is a value, not a table" in stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 runs with CUDA")
def test_dry_run_shows_the_sizes_when_steps_cannot_be_timed_here(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "ablate", write(tmp_path, GRID), "--out", out, "--dry-run",
                              "--set", "train.precision=fp16")
    assert code == 0 and not out.exists()
    assert "could not time steps here" in stdout and "fp16" in stdout
    assert "8 of 8 runs to do" in stdout and stdout.count("gen-and-disc ordering.name=") == 4


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "ablations").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_ablations_expand_and_every_variant_resolves(path, monkeypatch):
    from arvision.ablate import backend
    from arvision.build import resolve

    monkeypatch.chdir(REPO)
    ablation = load_ablation(path.relative_to(REPO))  # claims and reference checked here
    assert len(ablation.config.seeds) >= 2
    firsts = {run.label: run for run in reversed(ablation.runs)}
    for label, run in firsts.items():
        source = f"{path.name}: variant {label}"
        recipe = backend.validate(run.data, source)
        if ablation.kind == "finetune":  # the classifier on the meta device; counts the classes
            require_fashion_mnist()
            assert backend.describe(recipe, source)["steps"] > 0
        else:
            resolve(recipe, source)  # geometry, without building
