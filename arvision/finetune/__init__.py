"""Full fine-tuning: the encoder as a timm classifier, trained on the engine with the papers'
protocol (layer-wise lr decay, mixup / cutmix, RandAugment, random erasing, label smoothing,
drop path, average pool + fc_norm, optional EMA). docs/evaluation.md describes it.
"""

from .recipe import (
    PAPER_FINETUNE_TRAIN,
    FinetuneConfig,
    FinetuneRecipe,
    derive_finetune_recipe,
    finetune_tables,
    is_finetune,
    load_finetune_recipe,
    structure_finetune_recipe,
)
from .run import FinetuneResult, build_finetuner, classifier_weights, evaluate_classifier, finetune

__all__ = [
    "PAPER_FINETUNE_TRAIN", "FinetuneConfig", "FinetuneRecipe", "FinetuneResult", "build_finetuner",
    "classifier_weights", "derive_finetune_recipe", "evaluate_classifier", "finetune",
    "finetune_tables", "is_finetune", "load_finetune_recipe", "structure_finetune_recipe",
]
