"""timm VisionTransformers by name: the one place the student and the timm teacher create them."""

import difflib
import functools
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

__all__ = ["SHAPE_OVERRIDES", "channel_stat", "check_vit_shape", "create_vit", "shape_overrides",
           "vit_defaults"]

#: The overrides whose combinations timm rejects (or builds into a model with no tokens).
SHAPE_KEYS = ("img_size", "patch_size", "embed_dim", "num_heads")
#: The ViT settings a recipe table may override (``[encoder]``, a ``timm`` teacher).
SHAPE_OVERRIDES = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "in_chans",
                   "class_token")


def shape_overrides(table: Any) -> dict[str, Any]:
    """The :data:`SHAPE_OVERRIDES` of a recipe table (None: the model's default)."""
    return {key: getattr(table, key) for key in SHAPE_OVERRIDES}


def create_vit(name: str, key: str, registers: bool = False, **kwargs: Any) -> VisionTransformer:
    """``timm.create_model(name, pretrained=False, **kwargs)`` for a timm VisionTransformer.

    ``None`` values in ``kwargs`` keep the model's default; ``registers`` admits models with
    register tokens. A name timm does not know, another kind of model, or overrides that do not
    fit together (:func:`check_vit_shape`) are a ValueError naming the recipe ``key``.
    """
    kwargs = {arg: value for arg, value in kwargs.items() if value is not None}
    check_vit_shape(name, key, kwargs)
    vit = _create(name, key, **kwargs)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{key}: {name!r} is a timm {type(vit).__name__}; pick a "
                         "VisionTransformer (vit_*)")
    if vit.reg_token is not None and not registers:
        raise ValueError(f"{key}: {name!r} has register tokens; pick a plain VisionTransformer")
    return vit


def check_vit_shape(name: str, key: str, overrides: dict[str, Any]) -> None:
    """Refuse overrides of the ViT ``name`` that timm rejects with an assert, or that leave no
    patch: a ValueError naming the recipe keys (siblings of ``key``, e.g. ``encoder.num_heads``)
    and their values, saying which value is the model's default."""
    defaults = {} if set(SHAPE_KEYS) <= overrides.keys() else vit_defaults(name)
    if not set(SHAPE_KEYS) <= overrides.keys() | defaults.keys():
        return  # not a ViT timm knows: create_vit names the problem
    prefix = key.rpartition(".")[0]
    shape = {arg: overrides.get(arg, defaults.get(arg)) for arg in SHAPE_KEYS}
    shown = {arg: f"{shape[arg]}" + ("" if arg in overrides else f" (the default of {name})")
             for arg in SHAPE_KEYS}
    if shape["embed_dim"] % shape["num_heads"]:
        raise ValueError(f"{prefix}.num_heads: {shown['num_heads']} does not divide "
                         f"{prefix}.embed_dim {shown['embed_dim']}; set {prefix}.num_heads to a "
                         f"divisor of {shape['embed_dim']}")
    if shape["patch_size"] > shape["img_size"]:
        raise ValueError(f"{prefix}.patch_size: {shown['patch_size']} is larger than "
                         f"{prefix}.img_size {shown['img_size']}, so the image holds no patch; set "
                         f"{prefix}.patch_size to at most {shape['img_size']}")


@functools.cache
def vit_defaults(name: str) -> dict[str, int]:
    """The defaults of :data:`SHAPE_KEYS` of the timm ViT ``name`` (built on the meta device:
    nothing allocated); {} for a name timm does not know or another kind of model."""
    try:
        with torch.device("meta"):
            vit = _create(name, "name")
    except Exception:  # creating it for real reports what is wrong
        return {}
    if not isinstance(vit, VisionTransformer) or not len(vit.blocks):
        return {}
    return {"img_size": vit.patch_embed.img_size[0], "patch_size": vit.patch_embed.patch_size[0],
            "embed_dim": vit.embed_dim, "num_heads": vit.blocks[0].attn.num_heads}


def _create(name: str, key: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model``; an unknown name is a ValueError naming ``key`` and close names."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.7)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ValueError(f"{key}: unknown timm model {name!r}{hint}") from None


def channel_stat(values: tuple[float, ...], channels: int, key: str = "values") -> Tensor:
    """Normalisation statistics, one value or one per channel -> (1, C, 1, 1); another count is a
    ValueError naming the recipe ``key``."""
    if len(values) not in (1, channels):
        raise ValueError(f"{key}: expected 1 or {channels} values (one per channel), got "
                         f"{len(values)}")
    return torch.tensor(values, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1).clone()
