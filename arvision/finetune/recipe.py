"""Fine-tuning recipes: a ``[finetune]`` table beside ``[encoder]``, ``[data]``, ``[train]``, ``[run]``.

A recipe with a ``[finetune]`` table (and no tokenizer or decoders) trains the encoder as a timm
classifier; ``arvision run`` tells the two kinds apart by that table. ``[train]`` drives the same
engine as pretraining (AdamW, warmup + cosine, accumulation, EMA, bf16, resume, torchrun).
"""

from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from ..checkpoint import load_checkpoint, require_pretraining
from ..config import make_converter, non_negative, positive, probability, setting, unit_interval
from ..errors import RecipeError
from ..model.timm_folder import is_timm_folder
from ..plugins import get_plugins
from ..recipe import (
    DataConfig,
    EncoderConfig,
    LogConfig,
    Recipe,
    RunConfig,
    TrainConfig,
    apply_override,
    drop_none,
    read_recipe_data,
    read_toml,
    structure_config,
    structure_recipe,
)

__all__ = ["PAPER_FINETUNE_TRAIN", "FinetuneConfig", "FinetuneRecipe", "derive_finetune_recipe",
           "finetune_tables", "is_finetune", "load_finetune_recipe",
           "structure_finetune_recipe"]

@attrs.frozen
class FinetuneConfig:
    """Supervised fine-tuning of the encoder as a timm classifier (docs/evaluation.md)."""

    checkpoint: str | None = setting(
        None, "the encoder the fine-tuning starts from: a pretraining checkpoint (`arvision "
        "run`'s OUT/checkpoint.pt), a folder written by `arvision export` (or timm's "
        "save_for_hf), or hf-hub:ORG/NAME; unset: train from scratch (a supervised baseline, or "
        "a local teacher)")
    weights: Literal["model", "ema"] = setting(
        "model", "which encoder of the checkpoint: the trained weights or their EMA (kept when the "
        "pretraining set train.ema)")
    num_classes: int | None = setting(None, "classes of the head (default: the data's)",
                                      validator=positive)
    global_pool: Literal["avg", "token"] = setting(
        "avg", "'avg': mean of the patch tokens, then fc_norm (D-iGPT, BEiT, MAE); 'token': the CLS "
        "token after the final norm")
    layer_decay: float | None = setting(
        0.65, "layer-wise lr decay: block i of L trains at lr x decay^(L + 1 - i), the head at lr "
        "(timm param_groups_layer_decay); unset: one lr for all", validator=unit_interval)
    mixup: float = setting(0.8, "mixup alpha (0: off)", validator=non_negative)
    cutmix: float = setting(1.0, "cutmix alpha (0: off)", validator=non_negative)
    mix_prob: float = setting(1.0, "probability that a batch is mixed", validator=probability)
    switch_prob: float = setting(0.5, "probability of cutmix rather than mixup when both are on",
                                 validator=probability)
    label_smoothing: float = setting(0.1, "label smoothing", validator=probability)
    auto_augment: str = setting(
        "rand-m9-mstd0.5-inc1", "timm auto-augment policy applied after the crop and flip "
        "(RandAugment: 2 ops, magnitude 9, std 0.5, increasing); 'none': no policy")
    reprob: float = setting(0.25, "random erasing probability (per image, after normalisation)",
                            validator=probability)
    eval_crop: float = setting(0.875, "evaluation: resize to img_size / eval_crop, then centre "
                               "crop img_size (1.0: plain resize)", validator=unit_interval)
    eval_limit: int | None = setting(None, "score on the first N eval images (default: all)",
                                     validator=positive)
    eval_batch_size: int = setting(256, "images per forward when scoring", validator=positive)


@attrs.frozen
class FinetuneRecipe:
    """A fine-tuning run: the encoder as a classifier on the data's labels."""

    KIND: ClassVar[str] = "finetune"
    finetune: FinetuneConfig = attrs.Factory(FinetuneConfig)
    encoder: EncoderConfig = attrs.Factory(EncoderConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    train: TrainConfig = attrs.Factory(TrainConfig)
    run: RunConfig = attrs.Factory(RunConfig)
    log: LogConfig = attrs.Factory(LogConfig)


#: The D-iGPT / BEiT fine-tuning schedule for ViT-B (DESIGN.md), used where no recipe says otherwise.
PAPER_FINETUNE_TRAIN = {"batch_size": 1024, "epochs": 100, "warmup_epochs": 5, "base_lr": 1e-4,
                        "min_lr": 1e-6, "weight_decay": 0.05, "betas": [0.9, 0.999]}


def is_finetune(data: dict[str, Any]) -> bool:
    """Whether recipe tables describe fine-tuning (a ``[finetune]`` table) or pretraining."""
    return "finetune" in data


def structure_finetune_recipe(data: dict[str, Any], source: str) -> FinetuneRecipe:
    recipe = structure_config(make_converter(), data, FinetuneRecipe, source)
    if recipe.data.targets:
        raise RecipeError(f"{source}: data.targets: a target cache feeds pretraining; fine-tuning "
                          "reads the images and their labels (remove the key)")
    if recipe.encoder.init is not None:
        raise RecipeError(f"{source}: encoder.init: starts a pretraining; a fine-tuning starts "
                          "from finetune.checkpoint")
    if recipe.encoder.stem != "patch":
        raise RecipeError(f"{source}: encoder.stem: fine-tuning needs 'patch' (a timm image model); "
                          f"got {recipe.encoder.stem!r}")
    return recipe


def load_finetune_recipe(path: str | Path, overrides: list[str] = ()) -> FinetuneRecipe:
    return structure_finetune_recipe(read_recipe_data(path, overrides), str(path))


def derive_finetune_recipe(checkpoint: Path, pretrain: Recipe) -> dict[str, Any]:
    """Fine-tuning tables for a pretraining checkpoint: its encoder, its data with the fine-tuning
    crop (RandomResizedCrop 0.08..1, flip), the paper's schedule (:data:`PAPER_FINETUNE_TRAIN`)
    and drop path 0.1; written to the run's ``recipe.toml``, overridable with ``--set``."""
    encoder = drop_none(make_converter().unstructure(pretrain.encoder))
    encoder.pop("init", None)  # the checkpoint holds the encoder now
    data = drop_none(make_converter().unstructure(pretrain.data))
    data.pop("targets", None)
    data.pop("limit", None)
    return {
        "run": {"name": f"{pretrain.run.name}_finetune"},
        "log": drop_none(make_converter().unstructure(pretrain.log)),
        "finetune": {"checkpoint": str(checkpoint)},
        "encoder": {**encoder, "drop_path": 0.1},
        "data": {**data, "crop_scale": [0.08, 1.0], "flip": True},
        "train": {**PAPER_FINETUNE_TRAIN, "precision": pretrain.train.precision,
                  "seed": pretrain.train.seed},
    }



def finetune_tables(checkpoint: Path, recipe_path: Path | None = None,
                    overrides: list[str] = ()) -> dict[str, Any]:
    """The tables of a fine-tuning of ``checkpoint``: ``recipe_path``'s (its finetune.checkpoint
    set to ``checkpoint``) or, without one, :func:`derive_finetune_recipe`'s; then ``--set``."""
    if recipe_path is not None:
        data = read_toml(recipe_path)
        if not is_finetune(data):
            raise RecipeError(f"{recipe_path}: not a fine-tuning recipe (expected a [finetune] "
                              "table)")
    elif is_timm_folder(checkpoint):
        raise RecipeError(f"{checkpoint}: a timm model, without the recipe (data, schedule) of its "
                          "pretraining; pass --recipe with a [finetune] table")
    else:
        state = load_checkpoint(checkpoint)
        require_pretraining(checkpoint, state, "fine-tuning")
        data = derive_finetune_recipe(checkpoint, structure_recipe(state["recipe"], str(checkpoint),
                                                                   get_plugins()))
    data.setdefault("finetune", {})["checkpoint"] = str(checkpoint)
    for assignment in overrides:
        apply_override(data, assignment)
    return data
