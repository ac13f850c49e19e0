"""The fine-tuned model: the recipe's timm ViT with a classification head, started from the encoder
of a pretraining checkpoint (or from scratch), and its loss.

    images (B, C, H, W), normalised --timm ViT (drop path)--> blocks --pool--> (B, D)
        avg:   mean of the patch tokens -> fc_norm -> head        (D-iGPT, BEiT, MAE)
        token: the CLS token after the final norm -> head
    loss = cross-entropy against mixed soft targets (mixup / cutmix, already smoothed) or
           label-smoothed hard labels
"""

from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import RecipeError
from ..model import ModelOutput, create_vit
from ..model.attention import MaskedAttention
from ..model.pretrained import check_fits, load_into, read_pretrained_encoder, timm_arguments
from .recipe import FinetuneRecipe

__all__ = ["Classifier", "create_classifier", "load_pretrained_encoder"]

HEAD_KEYS = ("head.", "fc_norm.")  # new in the classifier: never in a pretraining checkpoint


class Classifier(nn.Module):
    """A timm ViT classifier and its training loss."""

    def __init__(self, vit: VisionTransformer, label_smoothing: float) -> None:
        super().__init__()
        self.vit = vit
        self.label_smoothing = label_smoothing

    def forward(self, images: Tensor, targets: Tensor) -> ModelOutput:
        """``targets``: class ids (B,), or mixed class probabilities (B, classes) from mixup."""
        logits = self.vit(images).float()  # (B, classes)
        smoothing = self.label_smoothing if targets.ndim == 1 else 0.0  # mixup smooths its own
        return ModelOutput(F.cross_entropy(logits, targets, label_smoothing=smoothing), {})


def create_classifier(recipe: FinetuneRecipe, num_classes: int, source: str) -> VisionTransformer:
    """The recipe's timm ViT with a ``num_classes`` head, random weights; a recipe timm would
    reject is a RecipeError naming ``source``. Its attention layers are
    :class:`MaskedAttention` (timm's parameters and names, so checkpoints stay timm's): in bf16
    on the CPU they write attention out, which ran a fine-tuning step 2x faster than SDPA's
    CPU flash kernel (docs/performance.md)."""
    pool = recipe.finetune.global_pool
    if pool == "token" and not recipe.encoder.class_token:  # timm asserts it
        raise RecipeError(f"{source}: finetune.global_pool: 'token' pools the class token, and "
                          "encoder.class_token is false; set global_pool = 'avg' or "
                          "encoder.class_token = true")
    arguments = {**timm_arguments(recipe), "num_classes": num_classes, "global_pool": pool,
                 "fc_norm": pool == "avg", "drop_path_rate": recipe.encoder.drop_path,
                 "attn_layer": MaskedAttention}  # timm's parameters; bf16 on the CPU written out
    arguments.pop("pretrained")
    try:
        return create_vit(recipe.encoder.name, "encoder.name", **arguments)
    except ValueError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def load_pretrained_encoder(vit: VisionTransformer, recipe: FinetuneRecipe, source: str
                            ) -> dict[str, Any]:
    """Load ``finetune.checkpoint``'s encoder into ``vit`` (head and fc_norm stay new).

    The checkpoint is an arvision pretraining checkpoint, a folder in the Hub layout (``arvision
    export``'s) or ``hf-hub:ORG/NAME``. The recipe must describe the same encoder (a one-line
    RecipeError names the first key that differs); a different ``img_size`` resamples the position
    embedding (bicubic). The final ``norm`` is dropped under average pooling, where timm uses
    ``fc_norm`` after the pool. Returns what was loaded: the checkpoint, its step and the weights.
    """
    tune = recipe.finetune
    encoder = read_pretrained_encoder(tune.checkpoint, "finetune.checkpoint", tune.weights)
    check_fits(encoder, recipe.encoder, vit, source, "finetune.checkpoint")
    skip = HEAD_KEYS + (("norm.",) if vit.global_pool == "avg" else ())
    load_into(vit, encoder, "finetune.checkpoint", skip)
    with torch.no_grad():  # a small head, as MAE and BEiT start fine-tuning
        nn.init.trunc_normal_(vit.head.weight, std=2e-5)
        nn.init.zeros_(vit.head.bias)
    return {"checkpoint": encoder.spec, "step": encoder.step, "weights": tune.weights}
