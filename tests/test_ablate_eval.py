"""The evaluation protocol of ablations: hyperparameters chosen on held-out train data, never on
the eval split; the random-init and raw-pixel baselines without a checkpoint."""

import attrs
import torch

from arvision.ablate.backend import evaluate_checkpoint
from arvision.ablate.protocol import EvalProtocol
from arvision.evaluate import (
    attentive_probe,
    heldout_split,
    knn_probe,
    load_encoder,
    pixel_features,
    random_init_encoder,
    raw_pixel_probes,
)
from arvision.pretrain import train
from conftest import tiny_recipe


def clustered(seed: int = 0, clusters: int = 12, pairs: int = 10, dim: int = 32):
    """Train: clusters of duplicated pairs, each pair with one label, 70% of a cluster's pairs
    its majority class (so the nearest neighbour, the pair's twin, is right more often than the
    cluster vote). Eval: fresh points near the centres, labelled with the majority class (the
    cluster vote is right, a single neighbour often is not)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen) * 3
    majority = torch.arange(clusters) % 4
    points, labels = [], []
    for c in range(clusters):
        for p in range(pairs):
            point = centres[c] + torch.randn(dim, generator=gen)
            label = majority[c] if p < pairs * 7 // 10 else (majority[c] + 1 + p % 3) % 4
            points += [point, point + 0.01 * torch.randn(dim, generator=gen)]
            labels += [label, label]
    evals = torch.cat([centres + 0.5 * torch.randn(clusters, dim, generator=gen)
                       for _ in range(5)])
    return torch.stack(points), torch.stack(labels), evals, majority.repeat(5)


def test_heldout_split_is_seeded_disjoint_and_complete():
    fit, held = heldout_split(50, 0.1, seed=3)
    assert len(held) == 5 and len(fit) == 45
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(50))
    assert torch.equal(held, heldout_split(50, 0.1, seed=3)[1])
    assert heldout_split(5, 0.01, seed=0) is None  # nothing would be held out


def test_knn_chooses_k_on_heldout_train_data_not_on_the_eval_split():
    train_x, train_y, eval_x, eval_y = clustered()
    result = knn_probe(train_x, train_y, eval_x, eval_y, ks=(1, 20))
    assert result["k"] == 1 and result["ks"] == [1, 20]
    assert result["heldout_top1"] > 85  # twins are held out with their pair in the bank
    # on the eval split k = 20 is far better: choosing there would have picked it
    assert knn_probe(train_x, train_y, eval_x, eval_y, k=20)["top1"] > result["top1"] + 20
    assert result["top1"] == knn_probe(train_x, train_y, eval_x, eval_y, k=1)["top1"]


def test_knn_with_one_k_keeps_the_plain_result():
    train_x, train_y, eval_x, eval_y = clustered()
    plain = knn_probe(train_x, train_y, eval_x, eval_y, k=7)
    assert plain["k"] == 7 and "ks" not in plain


def token_set(count: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=gen)
    tokens = torch.randn(count, 6, 16, generator=gen)
    tokens[:, 0, :4] += 3 * torch.nn.functional.one_hot(labels, 4)  # the class sits in token 0
    return tokens, labels


def test_attentive_probe_chooses_its_lr_on_heldout_train_data():
    result = attentive_probe(*token_set(256, 0), *token_set(128, 1), num_heads=2, epochs=2,
                             min_steps=100, lrs=(1e-7, 1e-2))
    assert result["lr"] == 1e-2 and result["lrs"] == [1e-7, 1e-2]
    assert result["heldout_top1"] > 45 and result["top1"] > 55  # chance: 25
    # the final probe is trained at the chosen lr on all of train
    assert result["top1"] == attentive_probe(*token_set(256, 0), *token_set(128, 1), num_heads=2,
                                             epochs=2, min_steps=100, lr=1e-2)["top1"]


def test_random_init_encoder_is_the_checkpoints_random_init(tmp_path):
    recipe = tiny_recipe()
    checkpoint = train(recipe, tmp_path / "run", "tiny.toml").checkpoint
    from_checkpoint = load_encoder(checkpoint, random_init=True)
    direct = random_init_encoder(recipe, "tiny.toml")
    assert direct.fingerprint == from_checkpoint.fingerprint  # they share feature caches
    expected = from_checkpoint.encoder.state_dict()
    for key, value in direct.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key
    trained = load_encoder(checkpoint).encoder.state_dict()
    assert any(not torch.equal(value, trained[key]) for key, value in expected.items())


def test_raw_pixel_probes_pool_flatten_and_probe():
    recipe = tiny_recipe()  # 16 x 16 RGB synthetic images
    pixels, labels = pixel_features(recipe, "train", 20, 16, max_side=8)
    assert pixels.shape == (20, 3 * 8 * 8) and labels.shape == (20,)
    assert pixels.min() >= 0 and pixels.max() <= 1
    results = raw_pixel_probes(recipe, ("linear", "knn", "attentive"), max_side=8, knn_ks=(1, 3))
    assert set(results) == {"linear", "knn"}  # no attentive probe on raw pixels
    assert results["knn"]["k"] in (1, 3) and results["linear"]["pixels"] == [192]
    assert results["linear"]["top1"] > 40  # 4 classes: chance is 25


def test_the_protocols_attention_reaches_every_runs_probes(tmp_path):
    """An ablation's ``[eval] attention`` decides how each run's encoder is read: the default
    follows the run (a raster-trained encoder block-causally), an explicit mode overrides it."""
    checkpoint = train(tiny_recipe(), tmp_path / "run", "tiny.toml").checkpoint
    for attention, mode in (("as_trained", "causal"), ("bidirectional", "bidirectional")):
        protocol = attrs.asdict(EvalProtocol(probes=("knn",), attention=attention, knn_ks=(1,)))
        result = evaluate_checkpoint(checkpoint, protocol)["knn"]
        assert (result["attention_requested"], result["attention"]) == (attention, mode)
    assert EvalProtocol().attention == "as_trained"
