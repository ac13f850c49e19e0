"""Probes where the answer is known, bidirectional deterministic features, and `arvision eval`."""

import json
from pathlib import Path

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.checkpoint import load_checkpoint, save_checkpoint
from arvision.evaluate import (
    LINEAR_LRS,
    LINEAR_WEIGHT_DECAYS,
    attentive_probe,
    default_blocks,
    knn_probe,
    linear_probe,
    load_encoder,
    run_probes,
    topk_accuracy,
)
from arvision.pretrain import train
from conftest import run_cli, tiny_recipe

CLASSES = 4
CHANCE = 100 / CLASSES


def separable(n: int, dim: int = 16, seed: int = 0, classes: int = CLASSES):
    """Gaussian clusters around well separated class centres: (n, dim) features, (n,) labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, dim, generator=gen), labels


def noise(n: int, dim: int = 16, seed: int = 0):
    """Features that say nothing about the (random) labels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randint(CLASSES, (n,), generator=gen)


# -- probes on feature tensors -------------------------------------------------------------------

def test_topk_accuracy_in_percent_and_top5_only_with_five_classes():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7]])
    assert topk_accuracy(scores, torch.tensor([0, 1]), 3) == {"top1": 50.0}
    scores = torch.eye(6)[[0, 1, 2, 3]] + torch.linspace(0, 0.1, 6)  # label 5 ranks second
    result = topk_accuracy(scores, torch.tensor([0, 5, 2, 4]), 6)
    assert result == {"top1": 50.0, "top5": 100.0}


def test_linear_probe_reaches_100_on_separable_features():
    result = linear_probe(*separable(400), *separable(200, seed=1))
    assert result["top1"] >= 99.0
    assert result["lr"] in LINEAR_LRS and result["weight_decay"] in LINEAR_WEIGHT_DECAYS
    assert "top5" not in result  # 4 classes


def test_linear_probe_stays_near_chance_on_random_labels():
    result = linear_probe(*noise(400), *noise(400, seed=1))
    assert abs(result["top1"] - CHANCE) < 10


def test_linear_probe_is_deterministic():
    data = (*separable(200), *separable(100, seed=1))
    assert linear_probe(*data, lrs=(1e-3,), weight_decays=(0.0, 0.1)) == \
        linear_probe(*data, lrs=(1e-3,), weight_decays=(0.0, 0.1))


def test_knn_reaches_100_on_separable_features_and_chance_on_random_labels():
    result = knn_probe(*separable(400), *separable(200, seed=1), k=20)
    assert result["top1"] >= 99.0 and result["k"] == 20 and result["temperature"] == 0.07
    assert abs(knn_probe(*noise(400), *noise(400, seed=1))["top1"] - CHANCE) < 10
    assert knn_probe(*separable(10), *separable(8, seed=1), k=50)["k"] == 10  # k <= train size


def test_knn_weights_votes_by_similarity():
    """Two close neighbours of class 1 outvote three far ones of class 0 (exp(sim / T))."""
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    labels = torch.tensor([1, 1, 0, 0, 0])
    query = torch.tensor([[1.0, 0.3]])
    assert knn_probe(bank, labels, query, torch.tensor([1]), k=5)["top1"] == 100.0


def token_set(n: int, seed: int, tokens: int = 8, dim: int = 16, signal: bool = True):
    """The class shows in ONE token at a random position, the rest is noise: (n, T, D)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tokens, dim, generator=gen)
    labels = torch.randint(CLASSES, (n,), generator=gen)
    if signal:
        centres = torch.randn(CLASSES, dim, generator=torch.Generator().manual_seed(7)) * 4
        where = torch.randint(tokens, (n,), generator=gen)
        x[torch.arange(n), where] = centres[labels] + 0.1 * x[torch.arange(n), where]
    return x, labels


def test_attentive_probe_learns_a_separable_token_set():
    result = attentive_probe(*token_set(256, 0), *token_set(256, 1), num_heads=2, epochs=10,
                             lr=3e-3, batch_size=64, min_steps=100)
    assert result["top1"] >= 95.0


def test_attentive_probe_stays_near_chance_on_random_labels():
    result = attentive_probe(*token_set(256, 0, signal=False), *token_set(512, 1, signal=False),
                             num_heads=2, epochs=10, lr=3e-3, batch_size=64, min_steps=100)
    assert abs(result["top1"] - CHANCE) < 10


# -- feature extraction --------------------------------------------------------------------------

@pytest.fixture
def tiny_encoder():
    torch.manual_seed(0)
    return build_model(resolve(tiny_recipe()), with_tokenizer=False).encoder.eval()


def test_features_are_deterministic_and_per_block(tiny_encoder):
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        first = tiny_encoder.features(images, (1, 2))
        second = tiny_encoder.features(images, (1, 2))
    assert [out.shape for out in first] == [torch.Size([3, 1 + 16, 32])] * 2  # CLS + 4x4 patches
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with torch.no_grad():  # timm's own forward of the same ViT: each block's (patches, CLS)
        _, reference = tiny_encoder.vit.forward_intermediates(
            (images - tiny_encoder.mean) / tiny_encoder.std, indices=[0, 1], norm=False,
            output_fmt="NLC", return_prefix_tokens=True)
    for features, (patches, cls) in zip(first, reference, strict=True):
        torch.testing.assert_close(features, torch.cat([cls, patches], dim=1), rtol=0, atol=1e-6)
    assert not torch.allclose(first[0], first[1])


def test_features_use_no_mask(tiny_encoder):
    """Every block runs without attn_mask, and the first patch sees the last one."""
    seen = []
    for block in tiny_encoder.vit.blocks:
        block.attn.register_forward_pre_hook(
            lambda _m, _args, kwargs: seen.append((kwargs.get("attn_mask"),
                                                   kwargs.get("is_causal", False))),
            with_kwargs=True)
    images = torch.rand(1, 3, 16, 16)
    changed = images.clone()
    changed[..., 12:, 12:] = 1 - changed[..., 12:, 12:]  # only the last (bottom-right) patch
    with torch.no_grad():
        before, after = (tiny_encoder.features(x, (2,))[0] for x in (images, changed))
    assert seen and all(mask is None and not causal for mask, causal in seen)
    assert not torch.allclose(before[:, 1], after[:, 1])  # the first patch token (after CLS)


def test_default_block_is_the_middle():
    assert default_blocks(12) == (6,) and default_blocks(6) == (3,) and default_blocks(1) == (1,)


# -- `arvision eval` end to end -----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    return train(tiny_recipe(train={"steps": 2}), out).checkpoint




def test_eval_linear_and_knn_write_eval_json_and_reuse_the_cache(trained, capsys):
    code, out, err = run_cli(capsys, "eval", "linear", str(trained))
    assert code == 0, err
    assert "linear" in out and "top-1 %" in out
    assert err.count("extracting") == 2  # train and eval split, once
    cache = sorted((trained.parent / "features").glob("*.pt"))
    assert len(cache) == 2  # train and eval split
    stamps = [path.stat().st_mtime_ns for path in cache]
    code, out, err = run_cli(capsys, "eval", "knn", str(trained), "--k", "5", "--json")
    assert code == 0, err
    assert "extracting" not in err  # features came from the cache
    assert [path.stat().st_mtime_ns for path in cache] == stamps
    assert json.loads(out)["knn"]["k"] == 5
    results = json.loads((trained.parent / "eval.json").read_text())
    for probe in ("linear", "knn"):
        assert 0 <= results[probe]["top1"] <= 100
        assert results[probe]["blocks"] == [1] and results[probe]["step"] == 2
        assert results[probe]["train_images"] == 64 and results[probe]["eval_split"] == "test"


def test_eval_random_init_and_blocks(trained, capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "knn", str(trained), "--random-init", "--blocks", "1,2",
                           "--limit", "32", "--eval-limit", "16", "--out", str(tmp_path))
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())["random_init"]["knn"]
    assert result["random_init"] and result["blocks"] == [1, 2]
    assert (result["train_images"], result["eval_images"]) == (32, 16)


def test_eval_attentive(trained, tmp_path):
    results = run_probes(trained, ("attentive",), out_dir=tmp_path, attentive_epochs=1)
    assert 0 <= results["attentive"]["top1"] <= 100 and results["attentive"]["heads"] == 2
    assert len(list((tmp_path / "features").glob("*-tokens.pt"))) == 2


def test_random_init_is_seeded_and_differs_from_the_trained_weights(trained):
    first, second = load_encoder(trained, random_init=True), load_encoder(trained, random_init=True)
    loaded = load_encoder(trained)
    weight = "vit.patch_embed.proj.weight"
    assert torch.equal(first.encoder.state_dict()[weight], second.encoder.state_dict()[weight])
    assert not torch.equal(first.encoder.state_dict()[weight], loaded.encoder.state_dict()[weight])


def test_weights_that_do_not_match_the_recipe_are_a_one_line_error(trained, tmp_path, capsys):
    state = load_checkpoint(trained)
    state.pop("format")
    state["recipe"]["encoder"]["depth"] = 3
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, state)
    code, _, err = run_cli(capsys, "eval", "linear", str(bad))
    assert code == 2
    assert err.count("\n") == 1 and str(bad) in err and "do not match" in err
    assert "blocks.2" in err


def test_blocks_out_of_range_is_a_one_line_error(trained, capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "knn", str(trained), "--blocks", "3", "--out",
                           str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "1..2" in err


def test_tokens_stem_encoder_is_probed_through_its_tokenizer(tmp_path):
    from test_components import palette_file

    recipe = tiny_recipe(tokenizer={"name": "palette", "path": palette_file(tmp_path),
                                    "num_colors": 8, "size": 8},
                         target={"name": "ce"}, encoder={"stem": "tokens"}, train={"steps": 1})
    checkpoint = train(recipe, tmp_path / "run").checkpoint
    results = run_probes(checkpoint, ("knn",), limit=32, eval_limit=16)
    assert 0 <= results["knn"]["top1"] <= 100
