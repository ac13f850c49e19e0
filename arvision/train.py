"""The training loop: one readable pass from recipe to checkpoints, resumable bit for bit.

    for each optimiser step:
        for each micro-batch:  autocast forward (tokenizer, plan, encoder, decoders, target),
                               backward of loss / accumulation steps
        guard (finite loss and gradient) -> clip -> AdamW -> warmup + cosine -> EMA -> metrics
        every checkpoint_every steps: model, optimiser, scheduler, scaler, EMA, RNGs, data position
"""

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import tomli_w
import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from .build import build_model, resolve
from .checkpoint import (
    load_checkpoint,
    prune,
    rank_part,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    saved_steps,
    step_path,
)
from .components import Tokens
from .data.loader import build_batches, build_dataset
from .data.target_cache import TargetCache
from .distributed import Ranks, load_train_state, setup, train_state, wrap
from .errors import ArvisionError, CheckpointError, RecipeError
from .metrics import MetricLog
from .plugins import Plugins
from .recipe import Recipe, TrainConfig, recipe_to_dict

__all__ = ["DivergedError", "Job", "TrainResult", "Trainer", "assemble_trainer", "fit", "train"]


class DivergedError(ArvisionError):
    """The loss or the gradient stopped being finite."""


@attrs.frozen
class Job:
    """What a Trainer trains, as ``recipe.toml`` and every checkpoint record it."""

    train: TrainConfig
    recipe: dict[str, Any]  # the whole recipe as plain TOML-able data
    source: str  # where the recipe came from, for error messages
    kind: str = "pretrain"  # 'pretrain' or 'finetune': a checkpoint resumes only its own kind


#: Turns a loader batch into the keyword arguments of the step module's forward (on ``device``).
Inputs = Callable[[Sequence[Tensor], torch.device], dict[str, Any]]
ParamGroups = Callable[[nn.Module, float], list[dict[str, Any]]]


@attrs.frozen
class TrainResult:
    out_dir: Path
    steps: int
    losses: tuple[float, ...]  # the loss of every step this process ran
    checkpoint: Path
    main: bool = True  # rank 0 (the process that reports)


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


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                   param_groups: ParamGroups = param_groups_weight_decay):
    """AdamW at lr = base_lr x batch / 256 over ``param_groups(model, weight_decay)`` (default: no
    weight decay on biases, norms and 1-D params; a group's ``lr_scale`` scales its lr)."""
    lr = config.base_lr * config.batch_size / 256
    groups = param_groups(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas, fused=device.type == "cuda")


def make_scheduler(optimizer, config: TrainConfig, steps: int, steps_per_epoch: int
                   ) -> CosineLRScheduler:
    """Per-step linear warmup, then cosine to ``min_lr``."""
    warmup = config.warmup_steps
    if config.warmup_epochs is not None:
        warmup = round(config.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, steps - 1)
    return CosineLRScheduler(
        optimizer, t_initial=max(1, steps - warmup), lr_min=config.min_lr, warmup_t=warmup,
        warmup_lr_init=config.min_lr, warmup_prefix=True, t_in_epochs=False,
    )


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


def configure_backends(config: TrainConfig, device: torch.device) -> None:
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.precision == "fp16" and device.type != "cuda":
        raise RecipeError("train.precision: 'fp16' needs CUDA; use 'bf16' on CPU")


@attrs.define
class Trainer:
    """The state of a run and the step that advances it."""

    job: Job
    out_dir: Path
    ranks: Ranks
    device: torch.device
    model: torch.nn.Module  # what is trained (parameters shared with ``step_module``)
    step_module: torch.nn.Module  # what the step calls: model, DDP, FSDP or compiled
    inputs: Inputs  # batch -> step_module keyword arguments
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
        return self.job.train

    # -- one optimiser step ------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        config, started = self.config, time.perf_counter()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        loss_sum, parts_sum, waited = 0.0, {}, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for index in range(self.accumulation):
            tick = time.perf_counter()
            inputs = self.inputs(next(self.batches), self.device)
            waited += time.perf_counter() - tick
            last = index == self.accumulation - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.step_module, "no_sync") \
                else self.step_module.no_sync()
            with sync, torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                      enabled=dtype is not None):
                output = self.step_module(**inputs)
                self.scaler.scale(output.loss / self.accumulation).backward()
            loss_sum += output.loss.item() / self.accumulation
            for key, value in output.parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value.item() / self.accumulation
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad or math.inf).item()
        metrics = self.ranks.mean({"loss": loss_sum, "grad_norm": grad_norm,
                                   **{f"loss/{k}": v for k, v in parts_sum.items()}}, self.device)
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
            "rng": rng_state({}),
            "data": self.batches.state_dict(),
            "recipe": self.job.recipe, "kind": self.job.kind,
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
        restore_rng_state(own["rng"], {})
        self.batches.load_state_dict(own["data"])


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compilation: ``torch.compile`` every transformer block in place (encoder and
    decoders). Compiling the whole model fails in dynamo on the plan's attrs classes, and blocks
    are where the time goes."""
    for name, module in model.named_modules():
        if name.endswith("blocks") and isinstance(module, torch.nn.ModuleList | torch.nn.Sequential):
            for block in module:
                block.compile()


def build_trainer(recipe: Recipe, out_dir: Path, source: str, plugins: Plugins | None) -> Trainer:
    """The pretraining Trainer: the recipe's ARModel on its data (or its target cache)."""
    config = recipe.train
    ranks, device = setup(config.device)
    configure_backends(config, device)
    seed_everything(config.seed)
    blueprint = resolve(recipe, source, plugins)
    micro, accumulation = micro_batching(config, ranks.world, source)
    dataset = build_dataset(recipe.data)
    cache = None
    if recipe.data.targets:
        cache = TargetCache(recipe.data.targets)
        cache.check(recipe, blueprint.image.size, blueprint.plugins)
    batches = build_batches(dataset, recipe.data, micro, blueprint.image.size, config.seed,
                            ranks.rank, ranks.world, cache)
    model = build_model(blueprint, with_tokenizer=cache is None).to(device)
    model.encoder.grad_checkpointing = config.activation_checkpointing
    job = Job(config, recipe_to_dict(recipe, blueprint.plugins), source)
    frozen = set(model.tokenizer.parameters()) if model.tokenizer is not None else set()
    return assemble_trainer(job, out_dir, ranks, device, model, batches, pretrain_inputs,
                            ema_source=model.encoder, shard_units=model.encoder.vit.blocks,
                            frozen=frozen, accumulation=accumulation, micro_batch=micro)


def assemble_trainer(job: Job, out_dir: Path, ranks: Ranks, device: torch.device,
                     model: nn.Module, batches: Any, inputs: Inputs, *, ema_source: nn.Module,
                     shard_units: Sequence[nn.Module], frozen: set[nn.Parameter] = frozenset(),
                     accumulation: int, micro_batch: int,
                     param_groups: ParamGroups = param_groups_weight_decay) -> Trainer:
    """Everything around a model that trains it: schedule length, EMA, DDP/FSDP, AdamW, compile.

    ``model`` is on ``device``; ``batches`` yield micro-batches of ``micro_batch`` images;
    ``shard_units`` are the blocks FSDP shards one by one; ``frozen`` parameters stay unsharded.
    """
    config = job.train
    steps_per_epoch = len(batches.loader) // accumulation
    if steps_per_epoch == 0:
        raise RecipeError(f"{job.source}: train.batch_size: {config.batch_size} is larger than the "
                          f"data set ({len(batches.loader.dataset)} images)")
    total = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.ema and config.strategy == "fsdp" and ranks.world > 1:
        raise RecipeError(f"{job.source}: train.ema: not supported with strategy 'fsdp' yet (the EMA "
                          "would hold full weights beside sharded ones); use 'ddp' or unset ema")
    ema = ModelEmaV3(ema_source, decay=config.ema) if config.ema else None
    step_module = wrap(model, config.strategy, ranks, device, shard_units, frozen)
    optimizer = make_optimizer(model, config, device, param_groups)
    if config.compile:
        compile_blocks(model)
    return Trainer(
        job=job, out_dir=out_dir, ranks=ranks, device=device, model=model,
        step_module=step_module, inputs=inputs, optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, total, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=config.precision == "fp16"), ema=ema,
        ema_source=ema_source, batches=batches,
        micro_batch=micro_batch, accumulation=accumulation, total_steps=total,
    )


#: Recipe keys a resumed run may change: how long it runs and how it reports, not what it trains.
RESUMABLE_CHANGES = ("train.steps", "train.epochs", "train.checkpoint_every", "train.log_every",
                     "train.keep_checkpoints", "data.num_workers", "data.eval_split", "run.out_dir",
                     "eval.")  # a key ending in "." covers its whole table


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_run(trainer: Trainer, path: Path, state: dict[str, Any]) -> None:
    """The checkpoint to resume was written by this kind of run with the same recipe, up to
    :data:`RESUMABLE_CHANGES`."""
    kind = state.get("kind", "pretrain")
    if kind != trainer.job.kind:
        raise CheckpointError(f"{path}: a {kind} checkpoint; this is a {trainer.job.kind} run "
                              "(pass another --out)")
    saved = _flat(state["recipe"])
    current = _flat(trainer.job.recipe)
    for key in sorted(set(saved) | set(current)):
        resumable = any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
                        for allowed in RESUMABLE_CHANGES)
        if not resumable and saved.get(key) != current.get(key):
            raise RecipeError(
                f"{trainer.job.source}: {key}: {current.get(key)!r} differs from the run being "
                f"resumed in {trainer.out_dir} ({saved.get(key)!r}); pass another --out")


def _link_final(step_file: Path, final: Path) -> None:
    """``final`` becomes another name of the last step checkpoint, atomically."""
    partial = final.with_name(f".{final.name}.partial")
    partial.unlink(missing_ok=True)
    os.link(step_file, partial)
    os.replace(partial, final)


def train(recipe: Recipe, out_dir: Path, source: str = "recipe",
          plugins: Plugins | None = None) -> TrainResult:
    """Pretrain as the recipe says, resuming from the newest checkpoint in ``out_dir`` if any."""
    return fit(build_trainer(recipe, out_dir, source, plugins))


def fit(trainer: Trainer) -> TrainResult:
    """Run ``trainer`` to its last step, resuming from the newest checkpoint in its ``out_dir``."""
    config, ranks, out_dir = trainer.config, trainer.ranks, trainer.out_dir
    directory = out_dir / "checkpoints"
    saved = saved_steps(directory)
    if saved:
        state = load_checkpoint(saved[-1])
        _check_same_run(trainer, saved[-1], state)
        trainer.load(saved[-1], state)
        del state
        if ranks.main:
            print(f"arvision: resuming {out_dir} from step {trainer.step}")
    elif ranks.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.toml").write_text(tomli_w.dumps(trainer.job.recipe))
    log = MetricLog(out_dir, trainer.total_steps) if ranks.main else None
    losses = []
    try:
        while trainer.step < trainer.total_steps:
            metrics = trainer.train_step()
            losses.append(metrics["loss"])
            step = trainer.step
            if log is not None and (step % config.log_every == 0 or step == trainer.total_steps):
                log.log(step, metrics)
            if config.checkpoint_every and step % config.checkpoint_every == 0 \
                    and step < trainer.total_steps:
                trainer.save(step_path(directory, step))
                if ranks.main:
                    prune(directory, config.keep_checkpoints)
    finally:
        if log is not None:
            log.close()
    final = step_path(directory, trainer.step)
    if not final.exists():
        trainer.save(final)
    if ranks.main:
        _link_final(final, out_dir / "checkpoint.pt")
        prune(directory, config.keep_checkpoints)
    ranks.barrier()
    return TrainResult(out_dir, trainer.step, tuple(losses), out_dir / "checkpoint.pt", ranks.main)
