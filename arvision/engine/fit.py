"""Running a Trainer to its last step: resume from the newest checkpoint, log, save, keep the last
good ones, and name the final checkpoint.

A run's output directory holds ``recipe.toml``, ``metrics.jsonl``, ``tensorboard/`` (and what
other trackers keep: ``trackers.json``, ``wandb/``), ``checkpoints/step_*.pt`` and
``checkpoint.pt`` (another name of the last step's file). Running the same recipe on the same
directory continues where the newest checkpoint left off; a recipe that differs in what it trains
(anything but :data:`RESUMABLE_CHANGES`) is refused.
"""

import os
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError, RecipeError
from ..recipe import recipe_to_dict
from .checkpoints import prune, saved_steps, step_path
from .metrics import MetricLog
from .trainer import Trainer

__all__ = ["RESUMABLE_CHANGES", "TrainResult", "fit"]


@attrs.frozen
class TrainResult:
    out_dir: Path
    steps: int
    losses: tuple[float, ...]  # the loss of every step this process ran
    checkpoint: Path
    main: bool = True  # rank 0 (the process that reports)


#: Recipe keys a resumed run may change: how long it runs and how it reports, not what it trains.
RESUMABLE_CHANGES = ("train.steps", "train.epochs", "train.checkpoint_every", "train.log_every",
                     "train.keep_checkpoints", "data.num_workers", "data.eval_split", "run.out_dir",
                     "eval.", "log.")  # a key ending in "." covers its whole table


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
    if kind != trainer.kind:
        raise CheckpointError(f"{path}: a {kind} checkpoint; this is a {trainer.kind} run "
                              "(pass another --out)")
    saved = _flat(state["recipe"])
    current = _flat(recipe_to_dict(trainer.recipe))
    for key in sorted(set(saved) | set(current)):
        resumable = any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
                        for allowed in RESUMABLE_CHANGES)
        if not resumable and saved.get(key) != current.get(key):
            raise RecipeError(
                f"{trainer.source}: {key}: {current.get(key)!r} differs from the run being "
                f"resumed in {trainer.out_dir} ({saved.get(key)!r}); pass another --out")


def _link_final(step_file: Path, final: Path) -> None:
    """``final`` becomes another name of the last step checkpoint, atomically."""
    partial = final.with_name(f".{final.name}.partial")
    partial.unlink(missing_ok=True)
    os.link(step_file, partial)
    os.replace(partial, final)


def fit(trainer: Trainer, log: MetricLog | None = None) -> TrainResult:
    """Run ``trainer`` to its last step, resuming from the newest checkpoint in its ``out_dir``.

    ``log``: where rank 0 logs (its trackers stay open for results logged after training; the
    caller closes it); by default one that is closed when training ends.
    """
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
        (out_dir / "recipe.toml").write_text(tomli_w.dumps(recipe_to_dict(trainer.recipe)))
    own = log is None
    log = (log or MetricLog(out_dir, trainer.recipe)) if ranks.main else None
    losses, ok = [], False
    try:
        if log is not None:
            log.start(trainer.total_steps, trainer.step)
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
        ok = True
    finally:
        if log is not None and (own or not ok):
            log.close(ok)
        elif log is not None:
            log.stop()  # the caller logs its results, then closes it
    final = step_path(directory, trainer.step)
    if not final.exists():
        trainer.save(final)
    if ranks.main:
        _link_final(final, out_dir / "checkpoint.pt")
        prune(directory, config.keep_checkpoints)
    ranks.barrier()
    return TrainResult(out_dir, trainer.step, tuple(losses), out_dir / "checkpoint.pt", ranks.main)
