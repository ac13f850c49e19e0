"""The one set-up sequence of every run, pretraining or fine-tuning.

    start_run(recipe):   ranks and device (torchrun), backends, seeds, micro-batching
    ... the task builds its model, batches and the function from a batch to forward arguments ...
    assemble_trainer:    schedule length, EMA, DDP/FSDP, AdamW, compile -> Trainer
"""

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn

from ..errors import RecipeError
from ..precision import resolve_precision
from ..recipe.schema import TrainConfig
from .cpu_memory import reuse_freed_memory
from .distributed import Ranks, setup, wrap
from .optim import ParamGroups, compile_model, make_optimizer, make_scheduler
from .trainer import BatchInputs, Trainer

__all__ = ["RunStart", "assemble_trainer", "micro_batching", "seed_everything", "start_run"]


@attrs.frozen
class RunStart:
    """Where and how a run trains: this process's rank and device, and its micro-batching."""

    recipe: Any  # a Recipe or FinetuneRecipe
    source: str  # where the recipe came from, for error messages
    ranks: Ranks
    device: torch.device
    micro_batch: int  # images per forward pass on each rank
    accumulation: int  # forward passes per optimiser step

    @property
    def config(self) -> TrainConfig:
        return self.recipe.train


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def micro_batching(config: TrainConfig, world: int, source: str) -> tuple[int, int]:
    """(images per forward on each rank, forwards per optimiser step)."""
    micro = config.micro_batch or config.batch_size // world
    if micro * world == 0 or config.batch_size % (micro * world):
        raise RecipeError(f"{source}: train.batch_size: {config.batch_size} is not a multiple of "
                          f"micro_batch {micro} x {world} ranks")
    return micro, config.batch_size // (micro * world)


def configure_backends(config: TrainConfig, device: torch.device) -> None:
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.precision == "fp16" and device.type != "cuda":
        raise RecipeError("train.precision: 'fp16' needs CUDA; use 'bf16' on CPU")
    if device.type == "cpu" and config.cpu_allocator == "reuse":
        reuse_freed_memory()


def start_run(recipe: Any, source: str) -> RunStart:
    """Join torchrun's process group (if any), pick the device, set the backends, seed every RNG
    with ``train.seed`` and split the batch into micro-batches: before any model is built."""
    config = recipe.train
    ranks, device = setup(config.device)
    configure_backends(config, device)
    seed_everything(config.seed)
    micro, accumulation = micro_batching(config, ranks.world, source)
    return RunStart(recipe, source, ranks, device, micro, accumulation)


def assemble_trainer(start: RunStart, out_dir: Path, model: nn.Module, batches: Any,
                     batch_inputs: BatchInputs, *, ema_source: nn.Module,
                     shard_units: Sequence[nn.Module], frozen: set[nn.Parameter] = frozenset(),
                     param_groups: ParamGroups = param_groups_weight_decay) -> Trainer:
    """Everything around a model that trains it: schedule length, EMA, DDP/FSDP, AdamW, compile.

    ``model`` is on ``start.device``; ``batches`` yield micro-batches of ``start.micro_batch``
    images (``len(batches)``: micro-batches per epoch; ``state_dict`` for checkpoints);
    ``shard_units`` are the blocks FSDP shards one by one; ``frozen`` parameters stay unsharded.
    """
    config, source, ranks, device = start.config, start.source, start.ranks, start.device
    steps_per_epoch = len(batches) // start.accumulation
    if steps_per_epoch == 0:
        raise RecipeError(f"{source}: train.batch_size: {config.batch_size} is larger than the "
                          f"data set ({batches.dataset_size} images)")
    total = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.ema and config.strategy == "fsdp" and ranks.world > 1:
        raise RecipeError(f"{source}: train.ema: not supported with strategy 'fsdp' yet (the EMA "
                          "would hold full weights beside sharded ones); use 'ddp' or unset ema")
    ema = ModelEmaV3(ema_source, decay=config.ema) if config.ema else None
    step_module = wrap(model, config.strategy, ranks, device, shard_units, frozen)
    optimizer = make_optimizer(model, config, device, param_groups)
    compile_model(model, config.compile)
    return Trainer(
        recipe=start.recipe, source=source, out_dir=out_dir, ranks=ranks, device=device,
        model=model, step_module=step_module, batch_inputs=batch_inputs, optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, total, steps_per_epoch),
        scaler=torch.amp.GradScaler(
            device.type, enabled=resolve_precision(config.precision, device) == "fp16"), ema=ema,
        ema_source=ema_source, batches=batches,
        micro_batch=start.micro_batch, accumulation=start.accumulation, total_steps=total,
    )
