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
from ..engine.checkpoints import saved_steps
from ..engine.metrics import MetricLog
from ..errors import RecipeError
from ..model import ARModel, Encoder
from ..model.attention import AttentionBackend, choose_backend
from ..model.pretrained import PretrainedEncoder, check_fits, load_into, read_pretrained_encoder
from ..recipe import Recipe

__all__ = ["attach_ema", "build_trainer", "cached_tokens", "init_encoder", "pretrain_inputs",
           "train"]


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
    """The pretraining Trainer: the recipe's ARModel on its data (or its target cache).

    The data set is opened first (a missing ``data.root`` is found before a large teacher loads)
    and the model (the teacher's weights, ``encoder.init``) before the data loader, so a missing
    file stops the run before any worker process starts."""
    start = start_run(recipe, source)
    attention = attention_backend(recipe, start.device, source)
    blueprint = resolve(recipe, source)
    dataset = build_dataset(recipe.data)
    cache = None
    if recipe.data.targets:
        cache = TargetCache(recipe.data.targets)
        cache.check(recipe, blueprint.image.size)
    model = build_model(blueprint, with_tokenizer=cache is None)
    if recipe.encoder.init and not saved_steps(out_dir / "checkpoints"):
        loaded = init_encoder(model.encoder, recipe, source)
        if start.ranks.main:
            step = f" (step {loaded.step})" if loaded.step is not None else ""
            print(f"arvision: encoder starts from {loaded.spec}{step}")
    model = model.to(start.device)
    model.attention = attention
    model.recompute_in_backward(recipe.train.recompute, recipe.train.activation_checkpointing)
    batches = build_batches(dataset, recipe.data, start.micro_batch, blueprint.image.size,
                            recipe.train.seed, start.ranks.rank, start.ranks.world, cache)
    frozen = set(model.tokenizer.parameters()) if model.tokenizer is not None else set()
    trainer = assemble_trainer(start, out_dir, model, batches, pretrain_inputs,
                               ema_source=model.encoder, shard_units=model.encoder.vit.blocks,
                               frozen=frozen)
    attach_ema(model, trainer, recipe, source)
    return trainer


def attention_backend(recipe: Recipe, device: torch.device, source: str) -> AttentionBackend:
    """``train.attention_backend`` on ``device``; 'flex' without CUDA is a recipe error."""
    try:
        return choose_backend(recipe.train.attention_backend, device)
    except ValueError as exc:
        raise RecipeError(f"{source}: train.attention_backend: {exc}") from None


def attach_ema(model: ARModel, trainer: Trainer, recipe: Recipe, source: str) -> None:
    """Hand the trainer's EMA of the encoder to a tokenizer that reads it (``student`` with
    ``source = 'ema'``); without ``train.ema`` such a recipe is an error."""
    if model.tokenizer is None or not model.tokenizer.needs_ema:
        return
    if trainer.ema is None:
        raise RecipeError(f"{source}: train.ema: tokenizer {recipe.tokenizer.name!r} reads the EMA "
                          "of the encoder; set train.ema (its decay, e.g. 0.996)")
    model.tokenizer.attach(model.encoder, trainer.ema.module)


def init_encoder(encoder: Encoder, recipe: Recipe, source: str) -> PretrainedEncoder:
    """Load ``encoder.init`` into the student's ViT (continued pretraining): the recipe must
    describe the same encoder; another img_size resamples the position embedding."""
    if recipe.encoder.stem != "patch":
        raise RecipeError(f"{source}: encoder.init: needs encoder.stem = 'patch' (an encoder of "
                          "token ids has no patch embedding to start from)")
    loaded = read_pretrained_encoder(recipe.encoder.init, "encoder.init")
    check_fits(loaded, recipe.encoder, encoder.vit, source, "encoder.init")
    load_into(encoder.vit, loaded, "encoder.init")
    return loaded


def train(recipe: Recipe, out_dir: Path, source: str = "recipe", log: MetricLog | None = None
          ) -> TrainResult:
    """Pretrain as the recipe says, resuming from the newest checkpoint in ``out_dir`` if any;
    ``log``: see :func:`~arvision.engine.fit`."""
    return fit(build_trainer(recipe, out_dir, source), log)
