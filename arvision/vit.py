"""timm VisionTransformers by name: the one place the student and the timm teacher create them."""

import difflib
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

__all__ = ["channel_stat", "create_vit"]


def create_vit(name: str, key: str, registers: bool = False, **kwargs: Any) -> VisionTransformer:
    """``timm.create_model(name, pretrained=False, **kwargs)`` for a timm VisionTransformer.

    ``None`` values in ``kwargs`` keep the model's default; ``registers`` admits models with
    register tokens. A name timm does not know, or another kind of model, is a ValueError naming
    the recipe ``key``.
    """
    kwargs = {arg: value for arg, value in kwargs.items() if value is not None}
    try:
        vit = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.7)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ValueError(f"{key}: unknown timm model {name!r}{hint}") from None
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{key}: {name!r} is a timm {type(vit).__name__}; pick a "
                         "VisionTransformer (vit_*)")
    if vit.reg_token is not None and not registers:
        raise ValueError(f"{key}: {name!r} has register tokens; pick a plain VisionTransformer")
    return vit


def channel_stat(values: tuple[float, ...], channels: int) -> Tensor:
    """Normalisation statistics, one value or one per channel -> (1, C, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1).clone()
