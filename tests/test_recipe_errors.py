"""Recipes: every kind of bad input is one line naming file and key (exit 2); --set; round trips."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w

from arvision.cli import main
from arvision.plugins import get_plugins
from arvision.recipe import load_recipe, recipe_to_dict, save_recipe
from conftest import REPO, tiny_data


def write(tmp_path: Path, data: dict[str, Any] | None = None, text: str | None = None,
          name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data) if data is not None else text)
    return path


def without(key: str) -> dict[str, Any]:
    data = tiny_data()
    del data[key]
    return data


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``arvision ARGV`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("arvision: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# (id, recipe data or raw TOML text, dotted key that must be named, more text the line must contain)
BAD_RECIPES = [
    ("toml-syntax", "[train\nbase_lr = 1", "line 1", ["invalid TOML"]),
    ("toml-duplicate-key", "[train]\nsteps = 1\nsteps = 2\n", "line 3", ["invalid TOML"]),
    ("unknown-top-level-key", tiny_data(bogus={"a": 1}), "bogus", ["unknown key", "tokenizer"]),
    ("unknown-key-in-tokenizer", tiny_data(tokenizer={"name": "pixels", "foo": 1}), "tokenizer.foo",
     ["unknown key", "normalize"]),
    ("unknown-key-in-decoder", tiny_data(decoders=[{"name": "linear", "foo": 1}]), "decoders[0].foo",
     ["unknown key"]),
    ("unknown-key-in-second-decoder",
     tiny_data(decoders=[{"name": "linear"}, {"name": "linear", "predicts": "visible", "bar": 2}]),
     "decoders[1].bar", ["unknown key"]),
    ("unknown-key-in-target", tiny_data(target={"name": "ce", "smoothing": 0.1}), "target.smoothing",
     ["label_smoothing"]),
    ("unknown-key-nested", tiny_data(data={"synthetic": {"bogus": 1}}), "data.synthetic.bogus",
     ["unknown key", "num_images"]),
    ("string-for-float", tiny_data(train={"base_lr": "fast"}), "train.base_lr",
     ["expected float", "'fast'"]),
    ("float-for-int", tiny_data(train={"batch_size": 8.0}), "train.batch_size", ["expected int", "8.0"]),
    ("bool-for-float", tiny_data(train={"base_lr": True}), "train.base_lr", ["expected float", "True"]),
    ("string-for-bool", tiny_data(tokenizer={"name": "pixels", "normalize": "yes"}),
     "tokenizer.normalize", ["expected bool", "'yes'"]),
    ("float-for-int-in-component", tiny_data(encoder={"depth": 2.5}), "encoder.depth", ["expected int"]),
    ("wrong-item-type", tiny_data(train={"betas": [0.9, "a"]}), "train.betas[1]", ["expected float"]),
    ("wrong-tuple-length", tiny_data(train={"betas": [0.9]}), "train.betas", ["[0.9]"]),
    ("literal-choice", tiny_data(train={"precision": "fp8"}), "train.precision", ["'bf16'", "'fp8'"]),
    ("literal-in-decoder", tiny_data(decoders=[{"name": "linear", "predicts": "prev"}]),
     "decoders[0].predicts", ["'next'", "'visible'", "'prev'"]),
    ("out-of-range", tiny_data(train={"base_lr": -1.0}), "train.base_lr", ["> 0", "-1.0"]),
    ("out-of-range-zero", tiny_data(train={"clip_grad": 0.0}), "train.clip_grad", ["> 0"]),
    ("out-of-range-in-component", tiny_data(tokenizer={"name": "pixels", "patch_size": 0}),
     "tokenizer.patch_size", ["> 0"]),
    ("out-of-range-in-decoder", tiny_data(decoders=[{"name": "linear", "weight": -1.0}]),
     "decoders[0].weight", [">= 0"]),
    ("out-of-range-in-target", tiny_data(tokenizer={"name": "pixels"}, target={
        "name": "ce", "label_smoothing": 1.5}), "target.label_smoothing", ["[0, 1)", "1.5"]),
    ("unknown-tokenizer", tiny_data(tokenizer={"name": "pixel"}), "tokenizer.name",
     ["'pixel'", "did you mean 'pixels'?"]),
    ("unknown-ordering", tiny_data(ordering={"name": "rastr"}), "ordering.name",
     ["did you mean 'raster'?"]),
    ("unknown-decoder", tiny_data(decoders=[{"name": "linear"}, {"name": "lineer", "key": "b"}]),
     "decoders[1].name", ["did you mean 'linear'?"]),
    ("unknown-target", tiny_data(target={"name": "mes"}), "target.name", ["did you mean 'mse'?"]),
    ("component-name-missing", tiny_data(decoders=[{"predicts": "next"}]), "decoders[0].name",
     ["required", "linear"]),
    ("component-name-not-str", tiny_data(tokenizer={"name": 3}), "tokenizer.name", ["expected str"]),
    ("component-not-a-table", tiny_data(tokenizer="pixels"), "tokenizer", ["table"]),
    ("missing-tokenizer-table", without("tokenizer"), "tokenizer", ["required"]),
    ("missing-decoders", without("decoders"), "decoders", ["required"]),
    ("empty-decoders", tiny_data(decoders=[]), "decoders", ["at least one"]),
    ("duplicate-loss-keys", tiny_data(decoders=[{"name": "linear"}, {"name": "linear"}]), "decoders",
     ["'linear_next'", "key"]),
    ("duplicate-explicit-keys",
     tiny_data(decoders=[{"name": "linear", "key": "a"}, {"name": "linear", "predicts": "visible",
                                                         "key": "a"}]),
     "decoders", ["'a'"]),
    ("ce-on-features", tiny_data(target={"name": "ce"}), "target", ["'mse'"]),
    ("patch-does-not-divide-image", tiny_data(encoder={"patch_size": 5}), "tokenizer", ["5"]),
    ("unknown-timm-model", tiny_data(encoder={"name": "vit_nonexistent"}), "encoder",
     ["vit_nonexistent"]),
    ("mean-per-channel", tiny_data(encoder={"mean": [0.5, 0.5]}), "encoder.mean", ["2"]),
    ("table-given-a-number", tiny_data(train=3), "train", ["table", "3"]),
    ("unknown-compile-mode", tiny_data(train={"compile": "graph"}), "train.compile",
     ["'model'", "'graph'"]),
    ("unknown-cpu-allocator", tiny_data(train={"cpu_allocator": "jemalloc"}),
     "train.cpu_allocator", ["'reuse'", "'jemalloc'"]),
    ("unknown-recompute-kind", tiny_data(train={"recompute": ["gelu"]}), "train.recompute[0]",
     ["'mlp_activation'", "'gelu'"]),
]


def _ids(cases):
    return [case.values[0] if hasattr(case, "values") else case[0] for case in cases]


@pytest.mark.parametrize(("case", "recipe", "key", "more"), BAD_RECIPES, ids=_ids(BAD_RECIPES))
def test_bad_recipe_is_one_line_with_file_and_key(tmp_path, capsys, case, recipe, key, more):
    path = write(tmp_path, text=recipe) if isinstance(recipe, str) else write(tmp_path, recipe)
    code, out, err = run_cli(capsys, "check", str(path))
    line = assert_one_line_error(code, err, str(path), key, *more)
    assert out == ""
    # The key comes right after the file name, as "FILE: KEY: message" (syntax errors excepted).
    if not case.startswith("toml-"):
        assert line.startswith(f"arvision: error: {path}: {key}"), line


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nowhere" / "recipe.toml"
    code, _, err = run_cli(capsys, "check", str(path))
    assert_one_line_error(code, err, str(path), "not found")


def test_directory_instead_of_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", str(tmp_path))
    assert_one_line_error(code, err, str(tmp_path), "directory")


def test_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    code, _, err = run_cli(capsys, "check", str(path))
    assert_one_line_error(code, err, str(path), "invalid TOML")


def test_several_errors_still_one_line(tmp_path, capsys):
    path = write(tmp_path, tiny_data(train={"base_lr": "x", "batch_size": 1.5}))
    code, _, err = run_cli(capsys, "check", str(path))
    assert_one_line_error(code, err, str(path), "train.base_lr", "train.batch_size")


def test_run_reports_the_same_way(tmp_path, capsys):
    path = write(tmp_path, tiny_data(train={"base_lr": "x"}))
    code, _, err = run_cli(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, str(path), "train.base_lr")
    assert not (tmp_path / "out").exists()


# --set assignments that cannot be applied: (id, assignment, what the line must name)
BAD_SETS = [
    ("no-equals", "train.base_lr", "train.base_lr"),
    ("empty-key", "=1", "=1"),
    ("empty-part", "train..base_lr=1", "train..base_lr"),
    ("index-out-of-range", "decoders.3.weight=0.5", "decoders.3"),
    ("index-not-a-number", "decoders.first.weight=0.5", "decoders.first"),
    ("into-a-value", "train.base_lr.x=1", "train.base_lr"),
]


@pytest.mark.parametrize(("case", "assignment", "key"), BAD_SETS, ids=[c[0] for c in BAD_SETS])
def test_bad_set_is_one_line(tmp_path, capsys, case, assignment, key):
    path = write(tmp_path, tiny_data())
    code, _, err = run_cli(capsys, "check", str(path), "--set", assignment)
    assert_one_line_error(code, err, "--set", key)


@pytest.mark.parametrize("assignment", ["train.base_lr", "decoders.3.weight=0.5"])
def test_bad_set_names_the_recipe_file(tmp_path, capsys, assignment):
    path = write(tmp_path, tiny_data())
    code, _, err = run_cli(capsys, "check", str(path), "--set", assignment)
    assert_one_line_error(code, err, str(path))


@pytest.mark.parametrize(("assignment", "key", "more"), [
    ("train.base_lr=fast", "train.base_lr", "expected float"),
    ("train.batch_size=2.5", "train.batch_size", "expected int"),
    ("train.bogus=1", "train.bogus", "unknown key"),
    ("tokenizer.name=pixel", "tokenizer.name", "did you mean 'pixels'?"),
    ("decoders.0.foo=1", "decoders[0].foo", "unknown key"),
    ("encoder.depth=0", "encoder.depth", "> 0"),
])
def test_set_value_errors_name_file_and_key(tmp_path, capsys, assignment, key, more):
    path = write(tmp_path, tiny_data())
    code, _, err = run_cli(capsys, "check", str(path), "--set", assignment)
    assert_one_line_error(code, err, str(path), key, more)


def test_subprocess_exit_code_and_single_line(tmp_path):
    path = write(tmp_path, tiny_data(train={"base_lr": "fast"}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "arvision", "check", "bad.toml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == ["arvision: error: bad.toml: train.base_lr: expected float, got 'fast'"], lines
    assert path.exists()


# ---------------------------------------------------------------- --set that works


def test_set_overrides_with_toml_values(tmp_path):
    # The file names a tokenizer that does not exist: the override must replace it before checking.
    path = write(tmp_path, tiny_data(tokenizer={"name": "pixel"}, target={"name": "ce"}), name="r.toml")
    recipe = load_recipe(path, plugins=get_plugins(), overrides=[
        "train.base_lr=1e-3", "encoder.depth=3", "train.betas=[0.9, 0.99]", "tokenizer.name=pixels",
        "tokenizer.normalize=false", "decoders.0.weight=0.5", "target.name='mse'",
        "data.synthetic.num_images=32", "run.name='two words'", "data.flip=true", "train.seed=7",
    ])
    assert recipe.train.base_lr == 1e-3
    assert isinstance(recipe.train.base_lr, float)
    assert recipe.encoder.depth == 3
    assert recipe.train.betas == (0.9, 0.99)
    assert recipe.tokenizer.name == "pixels"
    assert recipe.tokenizer.config.normalize is False
    assert recipe.decoders[0].weight == 0.5
    assert recipe.target.name == "mse"
    assert recipe.data.synthetic.num_images == 32
    assert recipe.data.synthetic.image_size == 16  # siblings of an overridden key stay
    assert recipe.run.name == "two words"
    assert recipe.data.flip is True
    assert recipe.train.seed == 7
    assert recipe.train.batch_size == 8  # untouched keys keep the file's values


def test_set_bare_word_is_a_string(tmp_path):
    path = write(tmp_path, tiny_data(tokenizer={"name": "pixels"}), name="r.toml")
    recipe = load_recipe(path, ["tokenizer.name=pixels", "run.name=hello", "train.device=cpu"],
                         plugins=get_plugins())
    assert recipe.tokenizer.name == "pixels"
    assert recipe.run.name == "hello"
    assert recipe.train.device == "cpu"


def test_set_is_applied_in_order_and_does_not_touch_the_file(tmp_path):
    path = write(tmp_path, tiny_data(), name="r.toml")
    before = path.read_text()
    recipe = load_recipe(path, ["encoder.depth=3", "encoder.depth=4", "decoders.0.predicts=visible"],
                         plugins=get_plugins())
    assert recipe.encoder.depth == 4
    assert recipe.decoders[0].predicts == "visible"
    assert recipe.decoders[0].loss_key == "linear_visible"
    assert path.read_text() == before


def test_cli_set_changes_what_check_builds(tmp_path, capsys):
    import json

    path = write(tmp_path, tiny_data(), name="r.toml")
    with pytest.raises(SystemExit) as exc:
        main(["check", str(path), "--json", "--set", "encoder.depth=3", "-s", "encoder.patch_size=8"])
    out, _ = capsys.readouterr()
    assert exc.value.code in (0, None)
    summary = json.loads(out)
    assert summary["encoder"]["depth"] == 3
    assert summary["student_grid"] == [2, 2]
    assert summary["ordering"]["segments"] == 4


# ---------------------------------------------------------------- resolved recipes


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_saved_recipe_loads_back_equal(tmp_path, monkeypatch, plugins, path):
    monkeypatch.chdir(REPO)
    if "[finetune]" in path.read_text():
        saved_finetune_recipe_loads_back_equal(tmp_path, path.relative_to(REPO))
        return
    recipe = load_recipe(path.relative_to(REPO), plugins=plugins)
    saved = tmp_path / "recipe.toml"
    save_recipe(recipe, saved)
    again = load_recipe(saved, plugins=plugins)
    assert again == recipe
    assert recipe_to_dict(again) == recipe_to_dict(recipe)
    save_recipe(again, tmp_path / "twice.toml")
    assert (tmp_path / "twice.toml").read_text() == saved.read_text()


def test_saved_recipe_is_fully_resolved(tmp_path, plugins):
    source = write(tmp_path, tiny_data(decoders=[
        {"name": "linear", "predicts": "next", "weight": 0.25},
        {"name": "linear", "predicts": "visible", "key": "own"}]), name="in.toml")
    recipe = load_recipe(source, ["train.betas=[0.8, 0.9]"], plugins=plugins)
    saved = tmp_path / "resolved.toml"
    save_recipe(recipe, saved)
    import tomllib

    data = tomllib.loads(saved.read_text())
    # Defaults the source left out are written, overrides are applied, unset options omitted.
    assert data["train"]["betas"] == [0.8, 0.9]
    assert data["train"]["weight_decay"] == 0.05
    assert data["encoder"]["stem"] == "patch"
    assert data["tokenizer"] == {"name": "pixels", "normalize": True}
    assert data["decoders"] == [
        {"name": "linear", "predicts": "next", "weight": 0.25},
        {"name": "linear", "predicts": "visible", "weight": 1.0, "key": "own"}]
    assert "steps" in data["train"] and "out_dir" not in data["run"]
    assert load_recipe(saved, plugins=plugins) == recipe


def test_component_configs_are_frozen_instances_of_the_registered_class(plugins):
    from conftest import tiny_recipe

    recipe = tiny_recipe(tokenizer={"name": "pixels", "patch_size": 2},
                         ordering={"name": "segments", "rows": 2, "cols": 2})
    tables = [("tokenizer", recipe.tokenizer), ("ordering", recipe.ordering),
              ("target", recipe.target), *(("decoder", table) for table in recipe.decoders)]
    for kind, table in tables:
        registered = plugins.get(kind, table.name).config
        assert type(table.config) is registered, (kind, table.name)
        names = [field.name for field in attrs.fields(registered)] or ["anything"]
        for name in names:  # a fieldless config must refuse new attributes too
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(table.config, name, None)
    assert recipe.tokenizer.config.patch_size == 2
    assert (recipe.ordering.config.rows, recipe.ordering.config.cols) == (2, 2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        recipe.train.base_lr = 1.0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        recipe.tokenizer = None


def saved_finetune_recipe_loads_back_equal(tmp_path, path):
    import tomli_w

    from arvision.finetune import load_finetune_recipe
    from arvision.recipe import recipe_to_dict

    recipe = load_finetune_recipe(path)
    saved = tmp_path / "recipe.toml"
    saved.write_text(tomli_w.dumps(recipe_to_dict(recipe)))
    assert load_finetune_recipe(saved) == recipe


def _shipped(name: str, **changes: dict[str, Any]) -> dict[str, Any]:
    """recipes/NAME with ``changes`` merged into its tables (a ``None`` value removes the key)."""
    import tomllib

    data = tomllib.loads((REPO / "recipes" / name).read_text())
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return data


def _teacher(**overrides: Any) -> dict[str, Any]:
    """A timm feature teacher of the tiny recipe's size (32 px, patch 8: a 4x4 grid), no weights."""
    table = {"name": "timm", "model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
             "embed_dim": 32, "depth": 2, "num_heads": 2, **overrides}
    return tiny_data(tokenizer={key: value for key, value in table.items() if value is not None},
                     target={"name": "cosine"})


# Encoder (and timm teacher) overrides that timm rejects with an assert, or that leave nothing to
# predict: (id, recipe data, is a fine-tuning recipe, what the one line must say)
ENCODER_CLASHES = [
    ("digpt-fmnist-without-num-heads", _shipped("digpt_fmnist.toml", encoder={"num_heads": None}),
     False, ["encoder.num_heads: 3 (the default of vit_tiny_patch16_224) does not divide "
             "encoder.embed_dim 128", "set encoder.num_heads"]),
    ("supervised-fmnist-without-num-heads",
     _shipped("supervised_fmnist.toml", encoder={"num_heads": None}),
     True, ["encoder.num_heads: 3 (the default of vit_tiny_patch16_224) does not divide "
            "encoder.embed_dim 128", "set encoder.num_heads"]),
    ("num-heads-does-not-divide-embed-dim", tiny_data(encoder={"embed_dim": 30, "num_heads": 4}),
     False, ["encoder.num_heads: 4 does not divide encoder.embed_dim 30;"]),
    ("num-heads-does-not-divide-the-default-embed-dim",
     tiny_data(encoder={"embed_dim": None, "num_heads": 5}),
     False, ["encoder.num_heads: 5 does not divide encoder.embed_dim 192 (the default of "
             "vit_tiny_patch16_224)"]),
    ("patch-larger-than-image", tiny_data(encoder={"patch_size": 32}),
     False, ["encoder.patch_size: 32 is larger than encoder.img_size 16"]),
    ("default-patch-larger-than-image", tiny_data(encoder={"img_size": 8, "patch_size": None}),
     False, ["encoder.patch_size: 16 (the default of vit_tiny_patch16_224) is larger than "
             "encoder.img_size 8"]),
    ("patch-larger-than-image-in-finetuning",
     _shipped("supervised_fmnist.toml", encoder={"img_size": 12, "patch_size": None}),
     True, ["encoder.patch_size: 16 (the default of vit_tiny_patch16_224) is larger than "
            "encoder.img_size 12"]),
    ("sincos-needs-embed-dim-divisible-by-4",
     tiny_data(encoder={"embed_dim": 34, "num_heads": 2, "pos_embed": "sincos"}),
     False, ["encoder.pos_embed: 'sincos' needs encoder.embed_dim divisible by 4", "got 34"]),
    ("patch-as-large-as-image-leaves-one-segment", tiny_data(encoder={"patch_size": 16}),
     False, ["ordering: the 1x1 student grid", "single segment", "encoder.patch_size"]),
    ("timm-teacher-without-num-heads", _teacher(num_heads=None),
     False, ["tokenizer.num_heads: 3 (the default of vit_tiny_patch16_224) does not divide "
             "tokenizer.embed_dim 32"]),
    ("timm-teacher-patch-larger-than-image", _teacher(patch_size=64),
     False, ["tokenizer.patch_size: 64 is larger than tokenizer.img_size 32"]),
    ("token-pooling-without-class-token",
     _shipped("supervised_fmnist.toml", encoder={"class_token": False},
              finetune={"global_pool": "token"}),
     True, ["finetune.global_pool: 'token'", "encoder.class_token is false"]),
]


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    """``None`` in a table means: leave the key out (TOML has no null)."""
    return {key: _drop_none(value) if isinstance(value, dict) else value
            for key, value in data.items() if value is not None}


@pytest.mark.parametrize(("case", "recipe", "finetune", "more"), ENCODER_CLASHES,
                         ids=_ids(ENCODER_CLASHES))
def test_encoder_overrides_timm_rejects_are_one_line(tmp_path, capsys, case, recipe, finetune, more):
    path = write(tmp_path, _drop_none(recipe))
    code, out, err = run_cli(capsys, "check", str(path))
    # Fine-tuning recipes' model errors do not name the file yet (finetune/summary.py).
    line = assert_one_line_error(code, err, *([] if finetune else [str(path)]), *more)
    assert "Traceback" not in err and "Error:" not in line and out == "", line
