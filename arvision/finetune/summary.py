"""What a fine-tuning recipe builds, for ``arvision check``: built on the meta device, no data read
unless the number of classes has to be counted."""

import math
from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.sources import build_dataset
from ..model.timm_folder import is_timm_folder
from ..precision import precision_label
from .data import count_classes
from .model import create_classifier
from .recipe import FinetuneRecipe

__all__ = ["summarize_finetune"]


def _steps(recipe: FinetuneRecipe, dataset: Sized | None) -> int | None:
    """Optimiser steps of one process: train.steps, or epochs x full batches of the train split
    (None when the split was not read)."""
    train = recipe.train
    if train.steps or dataset is None:
        return train.steps
    return math.ceil(train.epochs * (len(dataset) // train.batch_size))


def summarize_finetune(recipe: FinetuneRecipe, source: str) -> dict[str, Any]:
    tune, train = recipe.finetune, recipe.train
    dataset = None if tune.num_classes else build_dataset(recipe.data)  # read to count classes
    classes = tune.num_classes or count_classes(dataset, recipe.data, source)
    with torch.device("meta"):
        vit = create_classifier(recipe, classes, source)
        side, channels = vit.patch_embed.img_size[0], vit.patch_embed.proj.in_channels
        image = torch.zeros(1, channels, side, side)
        with FlopCounterMode(display=False) as forward:
            vit(image)
        with FlopCounterMode(display=False) as step:
            vit(image).sum().backward()
    depth = len(vit.blocks)
    checkpoint = tune.checkpoint
    if checkpoint is None:
        starts = "random init (supervised training from scratch)"
    else:
        found = "" if is_timm_folder(checkpoint) or Path(checkpoint).is_file() else \
            " (not found yet)"
        starts = f"{checkpoint}{found}, its {tune.weights} weights"
    decay = "none" if tune.layer_decay is None else \
        f"{tune.layer_decay}: lr x {tune.layer_decay ** (depth + 1):.3g} (embedding) .. x 1 (head)"
    mixing = f"mixup {tune.mixup}, cutmix {tune.cutmix}" if tune.mixup or tune.cutmix else "no mixing"
    crop = recipe.data.crop_scale
    augmentation = (f"crop scale {list(crop) if crop else 'none'}, flip {recipe.data.flip}, "
                    f"{tune.auto_augment}, erasing {tune.reprob}, {mixing}, label smoothing "
                    f"{tune.label_smoothing}")
    length = f"{train.steps} steps" if train.steps else f"{train.epochs:g} epochs"
    warmup = f"{train.warmup_epochs:g} epochs" if train.warmup_epochs is not None else \
        f"{train.warmup_steps} steps"
    precision = precision_label(train.precision, train.device)
    schedule = (f"{length}, batch {train.batch_size}, lr {train.base_lr:g} x batch / 256, warmup "
                f"{warmup}, wd {train.weight_decay:g}, EMA {train.ema or 'off'}, {precision}")
    return {
        "encoder": {"name": recipe.encoder.name, "depth": depth, "dim": vit.embed_dim,
                    "img_size": vit.patch_embed.img_size[0],
                    "patch_size": vit.patch_embed.patch_size[0]},
        "pool": tune.global_pool, "num_classes": classes, "drop_path": recipe.encoder.drop_path,
        "starts_from": starts, "layer_decay": decay, "augmentation": augmentation,
        "parameters": sum(p.numel() for p in vit.parameters()), "schedule": schedule,
        "flops_per_image": {"forward": forward.get_total_flops(),
                            "train_step": step.get_total_flops()},
        "steps": _steps(recipe, dataset),
    }
