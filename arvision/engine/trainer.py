"""The Trainer: the state of a run and the optimiser step that advances it, saved and restored bit
for bit.

    for each micro-batch:  autocast forward of the step module, backward of loss / accumulation
    guard (finite loss and gradient) -> clip -> AdamW -> warmup + cosine -> EMA -> metrics
"""

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import ArvisionError, CheckpointError
from ..precision import autocast
from ..recipe import recipe_to_dict
from ..recipe.schema import TrainConfig
from .checkpoints import rank_part, restore_rng_state, rng_state
from .distributed import Ranks, load_train_state, train_state

__all__ = ["BatchInputs", "DivergedError", "Trainer"]

#: Turns a loader batch into the keyword arguments of the step module's forward, on ``device``.
BatchInputs = Callable[[Sequence[Tensor], torch.device], dict[str, Any]]


class DivergedError(ArvisionError):
    """The loss or the gradient stopped being finite."""


@attrs.define
class Trainer:
    """The state of a run and the step that advances it."""

    recipe: Any  # a Recipe, FinetuneRecipe, ...: its ``train`` table drives the run, its KIND names it
    source: str  # where the recipe came from, for error messages
    out_dir: Path
    ranks: Ranks
    device: torch.device
    model: torch.nn.Module  # what is trained (parameters shared with ``step_module``)
    step_module: torch.nn.Module  # what the step calls: model, DDP, FSDP or compiled
    batch_inputs: BatchInputs  # loader batch -> step_module keyword arguments
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    ema_source: torch.nn.Module  # the part of the model the EMA follows
    batches: Any
    micro_batch: int
    accumulation: int
    total_steps: int
    step: int = 0
    skipped: int = 0

    @property
    def config(self) -> TrainConfig:
        return self.recipe.train

    @property
    def kind(self) -> str:
        """'pretrain', 'finetune', ... (the recipe's KIND): a checkpoint resumes only a run of its
        own kind."""
        return self.recipe.KIND

    # -- one optimiser step ------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        config, started = self.config, time.perf_counter()
        loss_sum, parts_sum, extra_sum, waited = 0.0, {}, {}, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for index in range(self.accumulation):
            tick = time.perf_counter()
            inputs = self.batch_inputs(next(self.batches), self.device)
            waited += time.perf_counter() - tick
            last = index == self.accumulation - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.step_module, "no_sync") \
                else self.step_module.no_sync()
            with sync:
                with autocast(self.device, config.precision):  # forward only, as torch advises:
                    output = self.step_module(**inputs)  # backward follows the forward's dtypes
                self.scaler.scale(output.loss / self.accumulation).backward()
            loss_sum += output.loss.item() / self.accumulation
            for key, value in output.parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value.item() / self.accumulation
            for key, value in output.metrics.items():
                extra_sum[key] = extra_sum.get(key, 0.0) + float(value) / self.accumulation
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if config.clip_grad:  # without clipping the norm is only checked and logged
            torch.nn.utils.clip_grads_with_norm_(params, config.clip_grad, norm)
        grad_norm = norm.item()
        metrics = self.ranks.mean({"loss": loss_sum, "grad_norm": grad_norm,
                                   **{f"loss/{k}": v for k, v in parts_sum.items()}, **extra_sum},
                                  self.device)
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            self._non_finite(metrics, parts_sum)
        else:
            self.scaler.step(self.optimizer)
            if self.ema is not None:
                self.ema.update(self.ema_source, step=self.step + 1)
        self.scaler.update()
        self.step += 1
        self.scheduler.step_update(self.step)
        seconds = time.perf_counter() - started
        lr = max(group["lr"] for group in self.optimizer.param_groups)  # the unscaled lr (layer decay)
        return {**metrics, "lr": lr, "step_time": seconds,
                "data_time": waited,
                "images_per_s": self.config.batch_size / seconds}

    def _non_finite(self, metrics: dict[str, float], parts: dict[str, float]) -> None:
        self.skipped += 1
        shown = ", ".join(f"{key} {value:.4g}" for key, value in parts.items())
        message = (f"step {self.step + 1}: non-finite loss {metrics['loss']} ({shown}) or gradient "
                   f"norm {metrics['grad_norm']}")
        if self.skipped > self.config.skip_nonfinite:
            raise DivergedError(f"{message}; stopped before updating, the last checkpoint is intact"
                                f" (train.skip_nonfinite = {self.config.skip_nonfinite})")
        print(f"arvision: warning: {message}; step skipped ({self.skipped} of at most "
              f"{self.config.skip_nonfinite})")

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        model_state, optim_state = train_state(self.step_module, self.optimizer)
        return {
            "model": model_state, "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "step": self.step, "skipped": self.skipped,
            "rng": rng_state(),
            "data": self.batches.state_dict(),
            "recipe": recipe_to_dict(self.recipe), "kind": self.kind,
            "world": self.ranks.world,
        }

    def save(self, path: Path) -> None:
        """Rank 0 writes the checkpoint; every other rank its own data position and RNGs beside it."""
        state = self.state()  # a collective under DDP/FSDP: every rank takes part
        if self.ranks.main:
            save_checkpoint(path, state)
        else:
            save_checkpoint(rank_part(path, self.ranks.rank),
                            {key: state[key] for key in ("rng", "data", "step")})
        self.ranks.barrier()

    def load(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint at ``path`` (``state``: its contents, if already read)."""
        state = state if state is not None else load_checkpoint(path)
        if state.get("world", 1) != self.ranks.world:
            raise CheckpointError(f"{path}: written by {state.get('world', 1)} processes; resume "
                                  f"with the same number (this run has {self.ranks.world})")
        own = state if self.ranks.main else load_checkpoint(rank_part(path, self.ranks.rank))
        load_train_state(self.step_module, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.step, self.skipped = state["step"], state["skipped"]
        restore_rng_state(own["rng"])
        self.batches.load_state_dict(own["data"])
