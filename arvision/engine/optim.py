"""The optimisation every run shares: AdamW over parameter groups, warmup + cosine per step, and
compilation (per block or the whole model). The autocast precision is :mod:`arvision.precision`."""

import logging
from collections.abc import Callable
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..recipe.schema import TrainConfig

__all__ = ["ParamGroups", "compile_blocks", "compile_model", "make_optimizer", "make_scheduler"]

# timm warns that the cosine has no effect when the warmup takes all but one step (short runs, a
# fine-tuning shortened with --set train.epochs): the schedule is still what the recipe asks for.
logging.getLogger("timm.scheduler.cosine_lr").addFilter(
    lambda record: "will have no effect" not in record.getMessage())

#: ``param_groups(model, weight_decay)`` -> AdamW parameter groups (an ``lr_scale`` per group
#: scales its lr, as layer decay does)
ParamGroups = Callable[[nn.Module, float], list[dict[str, Any]]]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device,
                   param_groups: ParamGroups = param_groups_weight_decay) -> torch.optim.AdamW:
    """AdamW at lr = base_lr x batch / 256 over ``param_groups(model, weight_decay)`` (default: no
    weight decay on biases, norms and 1-D params). Fused (one kernel over every parameter) on
    CUDA and on the CPU, where torch's default per-tensor loop took 5-15x longer (its
    temporaries are allocated and freed per parameter)."""
    lr = config.base_lr * config.batch_size / 256
    groups = param_groups(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas,
                             fused=device.type in ("cuda", "cpu"))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int,
                   steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step linear warmup, then cosine to ``min_lr``."""
    warmup = config.warmup_steps
    if config.warmup_epochs is not None:
        warmup = round(config.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, steps - 1)
    return CosineLRScheduler(
        optimizer, t_initial=max(1, steps - warmup), lr_min=config.min_lr, warmup_t=warmup,
        warmup_lr_init=config.min_lr, warmup_prefix=True, t_in_epochs=False,
    )


def compile_blocks(model: nn.Module) -> None:
    """Regional compilation: ``torch.compile`` every transformer block in place (encoder and
    decoders): blocks are where the time goes, and identical blocks share one compiled graph."""
    for name, module in model.named_modules():
        if name.endswith("blocks") and isinstance(module, nn.ModuleList | nn.Sequential):
            for block in module:
                block.compile()


def compile_model(model: nn.Module, mode: str) -> None:
    """``train.compile``: 'blocks' (:func:`compile_blocks`), 'model' (the whole forward, in place,
    so parameter names and checkpoints stay those of the eager model) or 'none'."""
    if mode == "blocks":
        compile_blocks(model)
    elif mode == "model":
        model.compile()
