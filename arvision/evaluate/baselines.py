"""Baselines for a recipe, without a checkpoint: its encoder at random init, and raw pixels.

    random init: the recipe's encoder built with its ``train.seed``, nothing loaded
                 -> the same features and probes as a trained encoder (features.py, runner.py)
    raw pixels:  images of the probe data (plain resize to the encoder's input, as for features)
                 -> average-pooled to at most ``max_side`` x ``max_side`` -> flattened (N, C*s*s)
                 -> the linear probe and k-NN with the same held-out selection (probes.py)

Raw pixels are pooled so that whitening (a D x D covariance) stays cheap for large inputs; at
Fashion-MNIST's 28 x 28 nothing is pooled. The attentive probe has no raw-pixel counterpart.
"""

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..build import build_model, resolve
from ..recipe import Recipe, recipe_to_dict
from .features import LoadedEncoder, probe_dataset
from .probes import KNN_KS, LINEAR_LRS, LINEAR_WEIGHT_DECAYS, knn_probe, linear_probe

__all__ = ["PIXEL_PROBES", "pixel_features", "random_init_encoder", "raw_pixel_probes"]

PIXEL_PROBES = ("linear", "knn")


def random_init_encoder(recipe: Recipe, source: str = "recipe") -> LoadedEncoder:
    """The recipe's frozen encoder at the initialisation its ``train.seed`` gives."""
    blueprint = resolve(recipe, source)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(recipe.train.seed)
        model = build_model(blueprint, with_tokenizer=recipe.encoder.stem == "tokens")
    record = recipe_to_dict(recipe)
    fingerprint = f"random-init:{json.dumps(record, sort_keys=True, default=str)}"
    encoder = model.encoder.eval().requires_grad_(False)
    return LoadedEncoder(encoder, model.tokenizer, blueprint, Path(source), None, fingerprint,
                         True)


def pixel_features(recipe: Recipe, split: str, limit: int | None, size: int, max_side: int,
                   batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Flattened pixels (N, C*s*s) in [0, 1], s = min(size, max_side), and labels (N,)."""
    dataset = probe_dataset(recipe, split, limit, size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=recipe.data.num_workers)
    side = min(size, max_side)
    pixels, labels = [], []
    for images, targets in loader:  # (B, C, size, size)
        if side < size:
            images = F.adaptive_avg_pool2d(images, side)  # (B, C, side, side)
        pixels.append(images.flatten(1).float())
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    return torch.cat(pixels), torch.cat(labels)


def raw_pixel_probes(recipe: Recipe, probes: Sequence[str] = PIXEL_PROBES, *,
                     limit: int | None = None, eval_limit: int | None = None, max_side: int = 32,
                     source: str = "recipe", knn_ks: Sequence[int] = KNN_KS,
                     linear_lrs: Sequence[float] = LINEAR_LRS,
                     linear_weight_decays: Sequence[float] = LINEAR_WEIGHT_DECAYS,
                     temperature: float = 0.07, heldout: float = 0.1, seed: int = 0
                     ) -> dict[str, dict[str, Any]]:
    """The linear probe and k-NN on the raw pixels of the recipe's probe data (other probes in
    ``probes`` are skipped); ``{probe: result}`` as :func:`~arvision.evaluate.run_probes` gives."""
    size = resolve(recipe, source).image.size
    data = recipe.data
    started = time.perf_counter()
    train_x, train_y = pixel_features(recipe, data.split, limit, size, max_side)
    eval_x, eval_y = pixel_features(recipe, data.eval_split, eval_limit, size, max_side)
    common = {"train_split": data.split, "eval_split": data.eval_split,
              "train_images": len(train_y), "eval_images": len(eval_y),
              "pixels": list(train_x.shape[1:]), "side": min(size, max_side),
              "features_seconds": round(time.perf_counter() - started, 2)}
    results = {}
    for probe in probes:
        tick = time.perf_counter()
        if probe == "linear":
            result = linear_probe(train_x, train_y, eval_x, eval_y, lrs=linear_lrs,
                                  weight_decays=linear_weight_decays, heldout=heldout, seed=seed)
        elif probe == "knn":
            result = knn_probe(train_x, train_y, eval_x, eval_y, temperature=temperature,
                               ks=knn_ks, heldout=heldout, seed=seed)
        else:
            continue
        results[probe] = {**result, **common,
                          "probe_seconds": round(time.perf_counter() - tick, 2)}
    return results
