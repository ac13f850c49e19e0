"""Pretraining: the recipe's ARModel on its data (or its target cache), on the engine."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..build import build_model, resolve
from ..components import Tokens
from ..data.loader import build_batches
from ..data.sources import build_dataset
from ..data.target_cache import TargetCache
from ..engine import Trainer, TrainResult, assemble_trainer, fit, start_run
from ..recipe import Recipe

__all__ = ["build_trainer", "cached_tokens", "pretrain_inputs", "train"]


def pretrain_inputs(batch: Sequence[Tensor], device: torch.device) -> dict[str, Any]:
    """``ARModel`` arguments from ``(images, labels, seeds)`` or a target-cache batch (labels
    unused; each sample's seed draws its segment order)."""
    images, _labels, seeds, *cached = batch
    return {"images": images.to(device, non_blocking=True), "tokens": cached_tokens(cached, device),
            "seeds": seeds}


def cached_tokens(cached: Sequence[Tensor], device: torch.device) -> Tokens | None:
    """Tokens of a target-cache batch (ids back to long, features to float32), else None."""
    if not cached:
        return None
    tokens, cls = cached
    tokens = tokens.to(device, non_blocking=True)
    tokens = tokens.float() if tokens.is_floating_point() else tokens.long()
    return Tokens(tokens, cls.to(device).float() if cls.numel() else None)


def build_trainer(recipe: Recipe, out_dir: Path, source: str = "recipe") -> Trainer:
    """The pretraining Trainer: the recipe's ARModel on its data (or its target cache)."""
    start = start_run(recipe, source)
    blueprint = resolve(recipe, source)
    dataset = build_dataset(recipe.data)
    cache = None
    if recipe.data.targets:
        cache = TargetCache(recipe.data.targets)
        cache.check(recipe, blueprint.image.size)
    batches = build_batches(dataset, recipe.data, start.micro_batch, blueprint.image.size,
                            recipe.train.seed, start.ranks.rank, start.ranks.world, cache)
    model = build_model(blueprint, with_tokenizer=cache is None).to(start.device)
    model.encoder.grad_checkpointing = recipe.train.activation_checkpointing
    frozen = set(model.tokenizer.parameters()) if model.tokenizer is not None else set()
    return assemble_trainer(start, out_dir, model, batches, pretrain_inputs,
                            ema_source=model.encoder, shard_units=model.encoder.vit.blocks,
                            frozen=frozen)


def train(recipe: Recipe, out_dir: Path, source: str = "recipe") -> TrainResult:
    """Pretrain as the recipe says, resuming from the newest checkpoint in ``out_dir`` if any."""
    return fit(build_trainer(recipe, out_dir, source))
