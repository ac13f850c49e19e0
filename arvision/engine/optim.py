"""The optimisation every run shares: AdamW over parameter groups, warmup + cosine per step, the
autocast precision, and compilation (per block or the whole model)."""

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..recipe.schema import TrainConfig

__all__ = ["AUTOCAST_DTYPES", "ParamGroups", "autocast", "compile_blocks", "compile_model",
           "fast_bf16", "make_optimizer", "make_scheduler", "planned_precision",
           "precision_label", "resolve_precision"]

# timm warns that the cosine has no effect when the warmup takes all but one step (short runs, a
# fine-tuning shortened with --set train.epochs): the schedule is still what the recipe asks for.
logging.getLogger("timm.scheduler.cosine_lr").addFilter(
    lambda record: "will have no effect" not in record.getMessage())

#: a resolved ``train.precision`` -> the autocast dtype (fp32: no autocast)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

#: ``param_groups(model, weight_decay)`` -> AdamW parameter groups (an ``lr_scale`` per group
#: scales its lr, as layer decay does)
ParamGroups = Callable[[nn.Module, float], list[dict[str, Any]]]


@functools.cache
def fast_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 matmuls natively: a CUDA GPU that supports bf16, a
    CPU with AVX512-BF16 or AMX (oneDNN's own test). Elsewhere bf16 autocast is emulated: on an
    AVX2 CPU a training step of the quickstart took 20 s in bf16 against 0.65 s in fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` as it runs on ``device``: 'auto' is bf16 where the device computes it natively
    (:func:`fast_bf16`), else fp16 on CUDA (with a gradient scaler) and fp32 elsewhere."""
    if precision != "auto":
        return precision
    device_type = torch.device(device).type
    if fast_bf16(device_type):
        return "bf16"
    return "fp16" if device_type == "cuda" else "fp32"


def planned_precision(precision: str, device_name: str = "auto") -> str:
    """``precision`` resolved for the device that ``train.device = device_name`` picks here."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" \
        else device_name
    return resolve_precision(precision, device)


def precision_label(config: TrainConfig) -> str:
    """The precision a run of ``config`` trains in on this machine: 'fp32', or 'fp32 (auto)'
    when the recipe leaves the choice to the device."""
    resolved = planned_precision(config.precision, config.device)
    return f"{resolved} (auto)" if config.precision == "auto" else resolved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``precision`` ('bf16', 'fp16'; 'auto' resolved for ``device``), or
    nothing for 'fp32'."""
    dtype = AUTOCAST_DTYPES[resolve_precision(precision, device)]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device,
                   param_groups: ParamGroups = param_groups_weight_decay) -> torch.optim.AdamW:
    """AdamW at lr = base_lr x batch / 256 over ``param_groups(model, weight_decay)`` (default: no
    weight decay on biases, norms and 1-D params)."""
    lr = config.base_lr * config.batch_size / 256
    groups = param_groups(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas, fused=device.type == "cuda")


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
