"""The fine-tuned model: the recipe's timm ViT with a classification head, started from the encoder
of a pretraining checkpoint (or from scratch), and its loss.

    images (B, C, H, W), normalised --timm ViT (drop path)--> blocks --pool--> (B, D)
        avg:   mean of the patch tokens -> fc_norm -> head        (D-iGPT, BEiT, MAE)
        token: the CLS token after the final norm -> head
    loss = cross-entropy against mixed soft targets (mixup / cutmix, already smoothed) or
           label-smoothed hard labels
"""

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError, RecipeError
from ..export import timm_arguments
from ..model import ModelOutput, create_vit
from ..plugins import get_plugins
from ..recipe import structure_recipe
from .recipe import FinetuneRecipe

__all__ = ["Classifier", "check_same_encoder", "create_classifier", "load_pretrained_encoder"]

#: Encoder settings that must agree between a pretraining checkpoint and its fine-tuning recipe
#: (img_size may differ: the position embedding is resampled).
SHAPE_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "in_chans", "class_token")
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
    reject is a RecipeError naming ``source``."""
    pool = recipe.finetune.global_pool
    if pool == "token" and not recipe.encoder.class_token:  # timm asserts it
        raise RecipeError(f"{source}: finetune.global_pool: 'token' pools the class token, and "
                          "encoder.class_token is false; set global_pool = 'avg' or "
                          "encoder.class_token = true")
    arguments = {**timm_arguments(recipe), "num_classes": num_classes, "global_pool": pool,
                 "fc_norm": pool == "avg", "drop_path_rate": recipe.encoder.drop_path}
    arguments.pop("pretrained")
    try:
        return create_vit(recipe.encoder.name, "encoder.name", **arguments)
    except ValueError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def _encoder_state(path: Path, state: dict[str, Any], weights: str) -> dict[str, Tensor]:
    """The timm ViT weights of a pretraining checkpoint's encoder (``model`` or ``ema``)."""
    if weights == "ema":
        if not isinstance(state.get("ema"), dict):
            raise CheckpointError(f"{path}: finetune.weights = 'ema' but the run kept no EMA "
                                  "(its train.ema was unset)")
        return {key.removeprefix("vit."): value for key, value in state["ema"].items()
                if key.startswith("vit.")}
    return {key.removeprefix("encoder.vit."): value for key, value in state["model"].items()
            if key.startswith("encoder.vit.")}


def check_same_encoder(recipe: FinetuneRecipe, pretrain_recipe: Any, path: Path,
                        source: str) -> None:
    ours, theirs = timm_arguments(recipe), timm_arguments(pretrain_recipe)
    differing = [(key, ours.get(key), theirs.get(key)) for key in SHAPE_KEYS
                 if ours.get(key) != theirs.get(key)]
    for key in ("name", "mean", "std", "stem"):
        mine, saved = getattr(recipe.encoder, key), getattr(pretrain_recipe.encoder, key)
        if mine != saved:
            differing.append((key, mine, saved))
    if differing:
        key, mine, saved = differing[0]
        raise RecipeError(f"{source}: encoder.{key}: {mine!r} does not match the encoder of {path} "
                          f"({saved!r})")


def load_pretrained_encoder(vit: VisionTransformer, recipe: FinetuneRecipe, source: str
                            ) -> dict[str, Any]:
    """Load ``finetune.checkpoint``'s encoder into ``vit`` (head and fc_norm stay new).

    The checkpoint's recipe must describe the same encoder (a one-line RecipeError names the first
    key that differs); a different ``img_size`` resamples the position embedding (bicubic). The
    final ``norm`` is dropped under average pooling, where timm uses ``fc_norm`` after the pool.
    Returns what was loaded: the path, the pretraining step and the weights.
    """
    path = Path(recipe.finetune.checkpoint)
    state = load_checkpoint(path)
    if state.get("kind", "pretrain") != "pretrain" or not isinstance(state.get("recipe"), dict):
        raise CheckpointError(f"{path}: not a pretraining checkpoint (fine-tune the checkpoint of "
                              "an `arvision run` pretraining)")
    pretrain_recipe = structure_recipe(state["recipe"], f"{path} (its recipe)", get_plugins())
    check_same_encoder(recipe, pretrain_recipe, path, source)
    weights = _encoder_state(path, state, recipe.finetune.weights)
    if vit.global_pool == "avg":
        weights = {key: value for key, value in weights.items() if not key.startswith("norm.")}
    if "pos_embed" in weights and weights["pos_embed"].shape != vit.pos_embed.shape:
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        weights["pos_embed"] = resample_abs_pos_embed(
            weights["pos_embed"], new_size=list(vit.patch_embed.grid_size),
            num_prefix_tokens=prefix, verbose=False)
    missing, unexpected = vit.load_state_dict(weights, strict=False)
    missing = [key for key in missing if not key.startswith(HEAD_KEYS)]
    if missing or unexpected:
        problem = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"{path}: its encoder does not fit {recipe.encoder.name} ({problem})")
    with torch.no_grad():  # a small head, as MAE and BEiT start fine-tuning
        nn.init.trunc_normal_(vit.head.weight, std=2e-5)
        nn.init.zeros_(vit.head.bias)
    return {"checkpoint": str(path), "step": state.get("step"), "weights": recipe.finetune.weights}
