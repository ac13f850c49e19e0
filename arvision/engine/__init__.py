"""The training engine every run shares: set-up (:mod:`.setup`), the Trainer and its step
(:mod:`.trainer`), AdamW, schedule and precision (:mod:`.optim`), running to the end with exact
resume (:mod:`.fit`), step checkpoints and RNG states (:mod:`.checkpoints`), torchrun with DDP or
FSDP2 (:mod:`.distributed`) and metrics and experiment trackers (:mod:`.metrics`,
:mod:`.trackers`). It knows nothing of what is trained:
pretraining (:mod:`arvision.pretrain`) and fine-tuning (:mod:`arvision.finetune`) hand it a model,
its batches and the function from a batch to the model's forward arguments; the forward returns a
:class:`ModelOutput` (the loss, its parts, other metrics to log)."""

from ..model import ModelOutput
from ..precision import autocast, resolve_precision
from .fit import RESUMABLE_CHANGES, TrainResult, fit
from .metrics import MetricLog, result_metrics
from .optim import compile_blocks, compile_model, make_optimizer, make_scheduler
from .setup import RunStart, assemble_trainer, start_run
from .trainer import BatchInputs, DivergedError, Trainer

__all__ = ["RESUMABLE_CHANGES", "BatchInputs", "DivergedError", "MetricLog", "ModelOutput",
           "RunStart", "TrainResult", "Trainer", "assemble_trainer", "autocast", "compile_blocks",
           "compile_model", "fit", "make_optimizer", "make_scheduler", "resolve_precision",
           "result_metrics", "start_run"]
