"""The training loop: one readable pass from recipe to checkpoint.

    batch -> autocast forward (tokenizer, plan, encoder, decoders, target) -> backward
          -> clip -> AdamW step -> per-step warmup + cosine -> metrics
"""

import math
import random
import time
from pathlib import Path

import attrs
import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from .build import Blueprint, build_model, resolve
from .checkpoint import save_checkpoint
from .data.loader import build_dataset, build_loader
from .errors import ArvisionError
from .metrics import MetricLog
from .plugins import Plugins
from .recipe import Recipe, TrainConfig, recipe_to_dict, save_recipe

__all__ = ["DivergedError", "TrainResult", "train"]


class DivergedError(ArvisionError):
    """The loss or the gradient stopped being finite."""


@attrs.frozen
class TrainResult:
    out_dir: Path
    steps: int
    losses: tuple[float, ...]  # the loss at every step
    checkpoint: Path


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    return config.steps or max(1, math.ceil(config.epochs * batches_per_epoch))


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device):
    """AdamW at lr = base_lr x batch / 256, no weight decay on biases, norms and 1-D params."""
    lr = config.base_lr * config.batch_size / 256
    groups = param_groups_weight_decay(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas, fused=device.type == "cuda")


def make_scheduler(optimizer, config: TrainConfig, steps: int, batches_per_epoch: int
                   ) -> CosineLRScheduler:
    """Per-step linear warmup, then cosine to ``min_lr``."""
    warmup = config.warmup_steps
    if config.warmup_epochs is not None:
        warmup = round(config.warmup_epochs * batches_per_epoch)
    warmup = min(warmup, steps - 1)
    return CosineLRScheduler(
        optimizer, t_initial=max(1, steps - warmup), lr_min=config.min_lr, warmup_t=warmup,
        warmup_lr_init=config.min_lr, warmup_prefix=True, t_in_epochs=False,
    )


def batches(loader):
    """Endless iteration over a loader, epoch after epoch."""
    while True:
        yield from loader


def train(recipe: Recipe, out_dir: Path, source: str = "recipe",
          plugins: Plugins | None = None) -> TrainResult:
    """Pretrain as the recipe says; write the resolved recipe, metrics and the final checkpoint."""
    config = recipe.train
    seed_everything(config.seed)
    blueprint = resolve(recipe, source, plugins)
    device = pick_device(config.device)
    loader = build_loader(build_dataset(recipe.data), recipe.data, config.batch_size,
                          blueprint.image.size, config.seed)
    if len(loader) == 0:
        raise ArvisionError(f"{source}: train.batch_size: {config.batch_size} is larger than the "
                            f"data set ({len(loader.dataset)} images)")
    steps = total_steps(config, len(loader))
    model = build_model(blueprint).to(device)
    optimizer = make_optimizer(model, config, device)
    scheduler = make_scheduler(optimizer, config, steps, len(loader))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out_dir / "recipe.toml", blueprint.plugins)
    log = MetricLog(out_dir, steps)
    try:
        losses = _loop(model, optimizer, scheduler, loader, blueprint, device, steps, log)
    finally:
        log.close()
    checkpoint = out_dir / "checkpoint.pt"
    save_checkpoint(checkpoint, {
        "model": model.state_dict(), "step": steps,
        "recipe": recipe_to_dict(recipe, blueprint.plugins),
    })
    return TrainResult(out_dir, steps, tuple(losses), checkpoint)


def _loop(model, optimizer, scheduler, loader, blueprint: Blueprint, device, steps: int,
          log: MetricLog) -> list[float]:
    config = blueprint.recipe.train
    generator = torch.Generator(device).manual_seed(config.seed)  # segment orders
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.precision == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config.clip_grad or math.inf
    losses, data = [], batches(loader)
    model.train()
    tick = time.perf_counter()
    for step in range(1, steps + 1):
        images, _labels = next(data)
        images = images.to(device, non_blocking=True)
        with autocast:
            output = model(images, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        parts = {key: value.item() for key, value in output.parts.items()}
        loss = output.loss.item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm.item())):
            raise DivergedError(f"step {step}: non-finite loss {loss} (parts {parts}) or "
                                f"gradient norm {grad_norm.item()}; stopped before updating")
        optimizer.step()
        scheduler.step_update(step)
        losses.append(loss)
        if step % config.log_every == 0 or step == steps:
            now = time.perf_counter()
            seen = config.log_every if step % config.log_every == 0 else step % config.log_every
            log.log(step, {
                "loss": loss, **{f"loss/{key}": value for key, value in parts.items()},
                "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
                "images_per_s": seen * images.shape[0] / (now - tick),
            })
            tick = now
    return losses
