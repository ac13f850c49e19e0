"""Pretraining: the recipe's autoregressive model on the engine (:mod:`.run`), and the target
cache that lets long runs and ablations skip the teacher (:mod:`.target_cache`)."""

from .run import build_trainer, cached_tokens, pretrain_inputs, train
from .target_cache import write_target_cache

__all__ = ["build_trainer", "cached_tokens", "pretrain_inputs", "train", "write_target_cache"]
