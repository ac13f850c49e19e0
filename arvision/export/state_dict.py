"""``arvision export --format state-dict``: the encoder as one plain timm state dict file, loaded
with the ``timm.create_model(...)`` call :func:`export_state_dict` returns (the model name and the
recipe's overrides, to copy by hand). The folder form (:mod:`.folder`) carries all of that itself."""

from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from ..checkpoint import key_mismatches, save_atomic
from ..errors import CheckpointError
from ..model.pretrained import PretrainedEncoder, read_pretrained_encoder, timm_arguments
from ..model.vit import create_vit
from ..recipe import Recipe

__all__ = ["build_encoder", "export_state_dict", "read_checkpoint_encoder", "timm_arguments",
           "timm_call"]


def timm_call(recipe: Recipe, path: str | Path) -> str:
    """The exact ``timm.create_model(...)`` line that loads an exported state dict."""
    arguments = timm_arguments(recipe)
    text = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
    return f"timm.create_model({recipe.encoder.name!r}, {text}, checkpoint_path={str(path)!r})"


def read_checkpoint_encoder(checkpoint: Path, weights: str = "model") -> PretrainedEncoder:
    """The encoder of an arvision pretraining checkpoint (``weights``: 'model' or 'ema')."""
    if checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: a folder; export reads an arvision checkpoint "
                              "(checkpoint.pt of `arvision run`)")
    return read_pretrained_encoder(str(checkpoint), "CKPT", weights)


def build_encoder(encoder: PretrainedEncoder, device: str = "cpu", **kwargs: Any
                  ) -> VisionTransformer:
    """The headless timm model of ``encoder``, its weights loaded strictly (on ``device='meta'``
    only checked); a one-line CheckpointError when they do not fit."""
    with torch.device(device):
        vit = create_vit(encoder.architecture, "encoder.name", num_classes=0,
                         **{**encoder.arguments, **kwargs})
    problems = key_mismatches(encoder.weights, vit.state_dict())
    if problems:
        raise CheckpointError(f"{encoder.spec}: its encoder does not fit timm {encoder.architecture}: "
                              f"{'; '.join(problems)}")
    if device != "meta":
        vit.load_state_dict(encoder.weights, strict=True)
    return vit


def export_state_dict(checkpoint: str | Path, out_path: str | Path, weights: str = "model") -> str:
    """Write an arvision checkpoint's encoder as a plain timm state dict; returns the
    ``timm.create_model`` call that loads it (strictly)."""
    checkpoint, out_path = Path(checkpoint), Path(out_path)
    if out_path.is_dir():
        raise CheckpointError(f"{out_path}: a folder; --format state-dict writes one file (OUT.pth)")
    encoder = read_checkpoint_encoder(checkpoint, weights)
    build_encoder(encoder, "meta")  # the weights fit the timm model the printed call creates
    save_atomic(out_path, encoder.weights)
    return timm_call(encoder.recipe, out_path)
