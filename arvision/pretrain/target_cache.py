"""Writing a target cache: the recipe's tokenizer over K fixed views of every image
(``arvision data cache-targets``); :mod:`arvision.data.target_cache` reads it in training."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..build import build_tokenizer, resolve
from ..data.sources import build_dataset
from ..data.target_cache import CacheWriter, fingerprint
from ..data.views import ViewAugment
from ..recipe import Recipe
from ..seeds import sample_seed, seeded_generator

__all__ = ["write_target_cache"]


def write_target_cache(recipe: Recipe, out: Path, views: int, seed: int = 0, batch_size: int = 64,
                       source: str = "recipe",
                       progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the recipe's tokenizer over ``views`` views of every image and store them in ``out``;
    view k of image i is drawn from ``(seed, k, i)``. Returns the manifest."""
    blueprint = resolve(recipe, source)
    tokenizer = build_tokenizer(blueprint).freeze()
    dataset = build_dataset(recipe.data)
    augment = ViewAugment(recipe.data, blueprint.image.size)
    writer = CacheWriter(out)
    jobs = [(index, view) for index in range(len(dataset)) for view in range(views)]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        images = [dataset[index][0] for index, _ in chunk]
        crops = [augment.draw(image, seeded_generator(sample_seed(seed, view, index)))
                 for image, (index, view) in zip(images, chunk, strict=True)]
        tokens = tokenizer(torch.stack([augment.render(image, crop)
                                        for image, crop in zip(images, crops, strict=True)]))
        records = []
        for row, ((index, view), crop) in enumerate(zip(chunk, crops, strict=True)):
            cls = None if tokens.cls is None else tokens.cls[row]
            records.append((index, view, crop, tokens.tokens[row], cls))
        writer.put(records)
        if progress is not None:
            progress(start + len(chunk), len(jobs))
    spec = blueprint.tokens
    return writer.finish({
        "images": len(dataset), "views": views, "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "spec": {"grid": list(spec.grid), "dim": spec.dim, "discrete": spec.discrete,
                 "cls": spec.cls},
        "fingerprint": fingerprint(recipe, blueprint.image.size),
    })
