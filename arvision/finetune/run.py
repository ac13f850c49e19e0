"""Fine-tune on the training engine, then score the result on the eval split.

    recipe --> classifier (timm ViT, head; encoder from finetune.checkpoint or random)
           --> Trainer (AdamW with layer-decay groups, warmup + cosine, Mixup in the step,
               EMA, bf16, checkpoints, resume, DDP / FSDP under torchrun)
           --> checkpoint.pt --> top-1 / top-5 of its weights (and its EMA) --> eval.json
           --> classifier_timm.pt: a plain timm state dict (a `timm` teacher reads it)
"""

import functools
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms.v2.functional import to_pil_image

from ..checkpoint import load_checkpoint, save_atomic
from ..data.loader import Transformed, keyed_batches, worker_count
from ..data.sources import build_dataset
from ..engine import (
    MetricLog,
    Trainer,
    TrainResult,
    assemble_trainer,
    autocast,
    fit,
    result_metrics,
    start_run,
)
from ..errors import RecipeError
from ..evaluate.probes import topk_accuracy
from ..evaluate.runner import write_results
from ..model.pretrained import timm_arguments
from .data import MixedInputs, SeededTransform, count_classes, eval_transform, train_transform
from .model import Classifier, create_classifier, load_pretrained_encoder
from .recipe import FinetuneRecipe

__all__ = ["FinetuneResult", "build_finetuner", "classifier_weights", "evaluate_classifier",
           "finetune"]


@attrs.frozen
class FinetuneResult:
    train: TrainResult
    scores: dict[str, Any] | None  # eval.json's "finetune" entry (rank 0), else None


def layer_decay_groups(model: Classifier, weight_decay: float, layer_decay: float | None
                       ) -> list[dict[str, Any]]:
    """AdamW groups of the classifier's ViT: no decay on biases, norms, positions and the class
    token; with ``layer_decay`` an ``lr_scale`` per block (timm's scheduler applies it)."""
    vit = model.vit
    if layer_decay is None:
        return param_groups_weight_decay(vit, weight_decay, vit.no_weight_decay())
    return param_groups_layer_decay(vit, weight_decay, no_weight_decay_list=vit.no_weight_decay(),
                                    layer_decay=layer_decay)


def _image_geometry(vit: nn.Module) -> tuple[int, int]:
    """(side, channels) the classifier reads."""
    return vit.patch_embed.img_size[0], vit.patch_embed.proj.in_channels


def build_finetuner(recipe: FinetuneRecipe, out_dir: Path, source: str = "recipe"
                    ) -> tuple[Trainer, dict[str, Any] | None]:
    """The fine-tuning Trainer, and what its encoder was loaded from (None: from scratch)."""
    tune = recipe.finetune
    start = start_run(recipe, source)
    if (tune.mixup > 0 or tune.cutmix > 0) and start.micro_batch % 2:
        raise RecipeError(f"{source}: train.batch_size: mixup and cutmix mix pairs of images; "
                          f"expected an even number per forward, got {start.micro_batch}")
    dataset = build_dataset(recipe.data)
    classes = tune.num_classes or count_classes(dataset, recipe.data, source)
    vit = create_classifier(recipe, classes, source)
    loaded = load_pretrained_encoder(vit, recipe, source) if tune.checkpoint else None
    vit.set_grad_checkpointing(recipe.train.activation_checkpointing)
    model = Classifier(vit, tune.label_smoothing).to(start.device)
    size, channels = _image_geometry(vit)
    items = SeededTransform(dataset, train_transform(recipe, size, channels), recipe.train.seed)
    batches = keyed_batches(items, recipe.data, start.micro_batch, recipe.train.seed,
                            start.ranks.rank, start.ranks.world)
    groups = functools.partial(layer_decay_groups, layer_decay=tune.layer_decay)
    trainer = assemble_trainer(start, out_dir, model, batches, MixedInputs(recipe, classes),
                               ema_source=model, shard_units=vit.blocks, param_groups=groups)
    return trainer, loaded


def classifier_weights(state: dict[str, Any], ema: bool = False) -> dict[str, torch.Tensor]:
    """A fine-tuning checkpoint's classifier (or its EMA) as a plain timm state dict."""
    weights = state["ema"] if ema else state["model"]
    return {key.removeprefix("vit."): value for key, value in weights.items()}


@torch.no_grad()
def evaluate_classifier(recipe: FinetuneRecipe, weights: dict[str, torch.Tensor],
                        device: torch.device) -> dict[str, Any]:
    """Top-1 / top-5 (percent) of a classifier on ``data.eval_split`` with the eval transform."""
    tune = recipe.finetune
    classes = weights["head.weight"].shape[0]
    vit = create_classifier(recipe, classes, "recipe")
    vit.load_state_dict(weights, strict=True)
    vit = vit.to(device).eval()
    size, channels = _image_geometry(vit)
    dataset = build_dataset(attrs.evolve(recipe.data, limit=None), recipe.data.eval_split)
    if tune.eval_limit:
        dataset = Subset(dataset, range(min(tune.eval_limit, len(dataset))))
    transform = eval_transform(recipe, size, channels)
    loader = DataLoader(Transformed(dataset, lambda image: transform(to_pil_image(image))),
                        batch_size=tune.eval_batch_size,
                        num_workers=worker_count(recipe.data.num_workers))
    logits, labels = [], []
    for images, targets in loader:
        with autocast(device, recipe.train.precision):
            logits.append(vit(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    scores = topk_accuracy(torch.cat(logits), torch.cat(labels), classes)
    return {**scores, "eval_split": recipe.data.eval_split, "eval_images": len(dataset)}


def finetune(recipe: FinetuneRecipe, out_dir: Path, source: str = "recipe") -> FinetuneResult:
    """Fine-tune as the recipe says (resuming from ``out_dir``'s newest checkpoint), then score the
    final weights and their EMA, merge the scores into ``OUT/eval.json`` under ``finetune`` and
    write ``OUT/classifier_timm.pt``."""
    trainer, start = build_finetuner(recipe, out_dir, source)
    log = MetricLog(out_dir, recipe)
    ok = False
    try:
        result = fit(trainer, log)
        scores = _score(recipe, trainer, result, start) if result.main else None
        if scores is not None:
            log.log_results(result_metrics(scores, "finetune"))
        ok = True
    finally:
        log.close(ok)
    return FinetuneResult(result, scores)


def _score(recipe: FinetuneRecipe, trainer: Trainer, result: TrainResult,
           start: dict[str, Any] | None) -> dict[str, Any]:
    """Score the final weights (and their EMA), write the classifier and ``eval.json``."""
    out_dir = result.out_dir
    started = time.perf_counter()
    state = load_checkpoint(result.checkpoint)
    scores = evaluate_classifier(recipe, classifier_weights(state), trainer.device)
    if recipe.train.ema:
        ema = evaluate_classifier(recipe, classifier_weights(state, ema=True), trainer.device)
        scores["ema"] = {key: ema[key] for key in ema if key.startswith("top")}
    weights = classifier_weights(state, ema=bool(recipe.train.ema))
    export = out_dir / "classifier_timm.pt"
    save_atomic(export, weights)
    arguments = {**timm_arguments(recipe), "num_classes": weights["head.weight"].shape[0],
                 "global_pool": recipe.finetune.global_pool,
                 "fc_norm": recipe.finetune.global_pool == "avg"}
    entry = {**scores, "init": "pretrained" if start else "scratch", "pretrained": start,
             "checkpoint": str(result.checkpoint), "step": result.steps,
             "train_split": recipe.data.split, "classifier": str(export),
             "timm_arguments": arguments,
             "eval_seconds": round(time.perf_counter() - started, 2)}
    write_results(out_dir / "eval.json", {"finetune": entry}, random_init=False)
    return entry
