"""The target cache: cached teacher outputs replace the online tokenizer, view for view."""

import lmdb
import pytest
import torch

from arvision.build import build_model, resolve
from arvision.data.target_cache import TargetCache
from arvision.errors import DataError
from arvision.pretrain import build_trainer, cached_tokens, train, write_target_cache
from conftest import tiny_recipe

VIEWS = {"crop_scale": [0.3, 1.0], "flip": True, "limit": 16}


def make_cache(tmp_path, views=2, **data):
    recipe = tiny_recipe(data={**VIEWS, **data})
    path = tmp_path / "targets.lmdb"
    manifest = write_target_cache(recipe, path, views, batch_size=8)
    return recipe, path, manifest


def test_cache_stores_every_view_and_a_manifest(tmp_path):
    _recipe, path, manifest = make_cache(tmp_path, views=3)
    assert manifest["images"] == 16 and manifest["views"] == 3
    assert manifest["spec"] == {"grid": [4, 4], "dim": 48, "discrete": False, "cls": False}
    cache = TargetCache(path)
    view, tokens, cls = cache.views_of(15, 2)
    assert tokens.shape == (4, 4, 48) and tokens.dtype == torch.float16 and cls is None
    assert 0 < view.height <= 16 and 0 < view.width <= 16


def test_cached_run_gives_the_online_teachers_loss_for_the_same_view(tmp_path):
    recipe, path, _ = make_cache(tmp_path)
    cached_recipe = tiny_recipe(data={**VIEWS, "targets": str(path)})
    trainer = build_trainer(cached_recipe, tmp_path / "run", "tiny.toml")
    assert trainer.model.tokenizer is None  # no teacher is built
    images, _labels, _seeds, *cached = next(trainer.batches)
    tokens = cached_tokens(cached, torch.device("cpu"))
    online_model = build_model(resolve(recipe, "tiny.toml"))
    online_model.load_state_dict(trainer.model.state_dict())
    online = online_model.tokenizer(images)
    torch.testing.assert_close(tokens.tokens, online.tokens, atol=2e-2, rtol=1e-2)  # float16
    order = torch.arange(16).expand(images.shape[0], -1)
    with torch.no_grad():
        from_cache = online_model(images, tokens=tokens, order=order).loss
        from_teacher = online_model(images, order=order).loss
    torch.testing.assert_close(from_cache, from_teacher, rtol=1e-3, atol=1e-4)


def test_training_on_a_cache_runs_without_the_tokenizer(tmp_path, monkeypatch):
    _recipe, path, _ = make_cache(tmp_path)

    def no_tokenizer(*_args, **_kwargs):
        raise AssertionError("the tokenizer was built for a run on a target cache")

    monkeypatch.setattr("arvision.build.build_tokenizer", no_tokenizer)
    result = train(tiny_recipe(data={**VIEWS, "targets": str(path)}, train={"steps": 3}),
                   tmp_path / "run")
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.parametrize(("change", "differs"), [
    ({"tokenizer": {"name": "pixels", "normalize": False}}, "tokenizer"),
    ({"data": {**VIEWS, "crop_scale": [0.5, 1.0]}}, "data"),
])
def test_a_cache_made_with_other_settings_is_refused(tmp_path, change, differs):
    _recipe, path, _ = make_cache(tmp_path)
    sections = {"data": {**VIEWS}, **change}
    sections["data"] = {**sections["data"], "targets": str(path)}
    with pytest.raises(DataError, match=f"made with other settings \\({differs} differ"):
        build_trainer(tiny_recipe(**sections), tmp_path / "run", "tiny.toml")


def test_missing_or_unfinished_cache_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.lmdb is not a target cache"):
        TargetCache(tmp_path / "nowhere.lmdb")
    unfinished = tmp_path / "unfinished.lmdb"
    lmdb.open(str(unfinished), map_size=1 << 20).close()  # interrupted before the manifest
    with pytest.raises(DataError, match="unfinished.lmdb has no manifest"):
        TargetCache(unfinished)


def test_cache_targets_command_writes_a_cache_a_run_accepts(tmp_path):
    import tomli_w

    from arvision.cli import main
    from conftest import tiny_data

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tomli_w.dumps(tiny_data(data=VIEWS)))
    out = tmp_path / "targets.lmdb"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "cache-targets", str(recipe), str(out), "--views", "2", "--batch-size", "8"])
    assert exit_info.value.code in (0, None)
    assert TargetCache(out).manifest["views"] == 2
    result = train(tiny_recipe(data={**VIEWS, "targets": str(out)}, train={"steps": 1}),
                   tmp_path / "run")
    assert result.steps == 1
