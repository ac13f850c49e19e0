"""Encoders to start from: the ViT of an arvision pretraining checkpoint, or a timm model in the
Hub layout (a folder written by ``arvision export`` or timm's ``save_for_hf``, ``local-dir:PATH``,
``hf-hub:ORG/NAME``). ``[finetune] checkpoint`` and ``encoder.init`` take any of them.

    read_pretrained_encoder(spec) -> PretrainedEncoder: timm state dict + what built it
    check_fits(encoder, recipe encoder, vit)   the recipe describes the same encoder (one line)
    load_into(vit, encoder)                     strict, the position grid resampled if it differs
"""

from pathlib import Path
from typing import Any

import attrs
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ..checkpoint import key_mismatches, load_checkpoint, require_pretraining
from ..data.sources import image_spec
from ..errors import CheckpointError, RecipeError
from ..plugins import Plugins, get_plugins
from ..recipe import EncoderConfig, structure_recipe
from .timm_folder import is_timm_folder, read_timm_folder
from .vit import channel_stat, create_vit

__all__ = ["SHAPE_KEYS", "PretrainedEncoder", "check_fits", "load_into", "read_pretrained_encoder",
           "recipe_encoder", "timm_arguments", "vit_shape"]

#: What must agree between an encoder and the recipe that loads it (img_size may differ: the
#: position embedding is resampled).
SHAPE_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "in_chans", "class_token")
ARVISION_ENCODER = "encoder.vit."  # where an arvision pretraining checkpoint keeps its timm ViT


def timm_arguments(recipe: Any) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments that rebuild a recipe's encoder (headless)."""
    enc = recipe.encoder
    data_size, channels = image_spec(recipe.data)
    overrides = {"patch_size": enc.patch_size, "embed_dim": enc.embed_dim, "depth": enc.depth,
                 "num_heads": enc.num_heads}
    return {"pretrained": False, "num_classes": 0, "img_size": enc.img_size or data_size,
            **{key: value for key, value in overrides.items() if value is not None},
            "in_chans": enc.in_chans or channels, "class_token": enc.class_token}


@attrs.frozen
class PretrainedEncoder:
    """A trained timm VisionTransformer (headless) and what it was built and fed with."""

    spec: str  # as the recipe gives it
    weights: dict[str, Tensor] = attrs.field(repr=False)  # timm state dict, no head
    architecture: str  # timm model name
    arguments: dict[str, Any]  # create_model arguments that rebuild it (None: the default)
    mean: tuple[float, ...]  # input normalisation it was trained with
    std: tuple[float, ...]
    step: int | None = None  # an arvision checkpoint's pretraining step
    recipe: Any = attrs.field(default=None, repr=False)  # an arvision checkpoint's Recipe

    def shape(self) -> dict[str, Any]:
        """:func:`vit_shape` of the architecture (built on the meta device)."""
        with torch.device("meta"):
            return vit_shape(create_vit(self.architecture, "architecture", num_classes=0,
                                        **self.arguments))


def read_pretrained_encoder(spec: str, key: str, weights: str = "model",
                            plugins: Plugins | None = None) -> PretrainedEncoder:
    """The encoder named by the recipe key ``key``: an arvision pretraining checkpoint (its
    trained weights, or with ``weights = 'ema'`` their EMA) or a Hub-layout model."""
    if is_timm_folder(spec):
        if weights == "ema":
            raise CheckpointError(f"{key}: {spec} is a timm model with one set of weights; 'ema' "
                                  "needs an arvision checkpoint")
        folder = read_timm_folder(spec, key)
        state = {name: value for name, value in folder.weights().items()
                 if not name.startswith("head.")}
        return PretrainedEncoder(str(spec), state, folder.architecture, folder.model_args,
                                 folder.stat("mean") or tuple(IMAGENET_DEFAULT_MEAN),
                                 folder.stat("std") or tuple(IMAGENET_DEFAULT_STD))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: {spec}: checkpoint not found (expected an arvision "
                              "checkpoint, a folder written by `arvision export`, or hf-hub:ORG/NAME)")
    state = load_checkpoint(path)
    require_pretraining(path, state, key)
    recipe = structure_recipe(state["recipe"], f"{path} (its recipe)", plugins or get_plugins())
    if recipe.encoder.stem == "tokens":
        raise CheckpointError(f"{path}: encoder.stem = 'tokens': the encoder embeds token ids and "
                              "has no patch embedding, so it is not a timm image model")
    return recipe_encoder(recipe, str(path), _arvision_weights(path, state, weights),
                          state.get("step"))


def recipe_encoder(recipe: Any, spec: str, weights: dict[str, Tensor] | None = None,
                   step: int | None = None) -> PretrainedEncoder:
    """The encoder a pretraining recipe builds, with ``weights`` (none: only its description)."""
    arguments = timm_arguments(recipe)
    for name in ("pretrained", "num_classes"):
        arguments.pop(name)
    return PretrainedEncoder(spec, weights or {}, recipe.encoder.name, arguments,
                             recipe.encoder.mean, recipe.encoder.std, step, recipe)


def _arvision_weights(path: Path, state: dict[str, Any], weights: str) -> dict[str, Tensor]:
    """The timm ViT weights of a pretraining checkpoint's encoder (``model`` or ``ema``)."""
    if weights == "ema":
        if not isinstance(state.get("ema"), dict):
            raise CheckpointError(f"{path}: finetune.weights = 'ema' but the run kept no EMA "
                                  "(its train.ema was unset)")
        return {key.removeprefix("vit."): value for key, value in state["ema"].items()
                if key.startswith("vit.")}
    return {key.removeprefix(ARVISION_ENCODER): value for key, value in state["model"].items()
            if key.startswith(ARVISION_ENCODER)}


def vit_shape(vit: VisionTransformer) -> dict[str, Any]:
    """The :data:`SHAPE_KEYS` of a built ViT."""
    return {"patch_size": vit.patch_embed.patch_size[0], "embed_dim": vit.embed_dim,
            "depth": len(vit.blocks), "num_heads": vit.blocks[0].attn.num_heads,
            "in_chans": vit.patch_embed.proj.in_channels, "class_token": vit.cls_token is not None}


def check_fits(encoder: PretrainedEncoder, config: EncoderConfig, vit: VisionTransformer,
               source: str, key: str) -> None:
    """The recipe's ``[encoder]`` (built as ``vit``) describes ``encoder``: same timm model, shape
    and input normalisation, else a RecipeError naming the first key that differs."""
    theirs, ours = encoder.shape(), vit_shape(vit)
    channels = ours["in_chans"]
    differing = [(name, ours[name], theirs[name]) for name in SHAPE_KEYS if ours[name] != theirs[name]]
    if config.name != encoder.architecture:
        differing.insert(0, ("name", config.name, encoder.architecture))
    for name in ("mean", "std"):
        mine, saved = getattr(config, name), getattr(encoder, name)
        if not differing and not torch.allclose(channel_stat(mine, channels),
                                                channel_stat(saved, channels)):
            differing.append((name, mine, saved))
    if differing:
        name, mine, saved = differing[0]
        raise RecipeError(f"{source}: encoder.{name}: {mine!r} does not match the encoder of "
                          f"{key} {encoder.spec} ({saved!r})")


def load_into(vit: VisionTransformer, encoder: PretrainedEncoder, key: str,
              skip: tuple[str, ...] = ()) -> None:
    """Load ``encoder``'s weights into ``vit`` strictly, but for keys starting with ``skip`` (new
    parts: a head) on either side; a different grid resamples the position embedding (bicubic)."""
    weights = {name: value for name, value in encoder.weights.items() if not name.startswith(skip)}
    if "pos_embed" in weights and weights["pos_embed"].shape != vit.pos_embed.shape:
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        weights["pos_embed"] = resample_abs_pos_embed(
            weights["pos_embed"], new_size=list(vit.patch_embed.grid_size),
            num_prefix_tokens=prefix, verbose=False)
    expected = {name: value for name, value in vit.state_dict().items()
                if not name.startswith(skip)}
    problems = key_mismatches(weights, expected)
    if problems:
        raise CheckpointError(f"{key}: {encoder.spec}: its encoder does not fit "
                              f"{type(vit).__name__} as the recipe builds it: {'; '.join(problems)}")
    vit.load_state_dict(weights, strict=False)
