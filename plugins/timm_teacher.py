"""A timm VisionTransformer and its checkpoint file as a feature teacher (tokenizer ``timm``).

Lets a locally trained model serve as the target of feature prediction: an encoder pretrained or
fine-tuned by arvision (a plain timm checkpoint, or a folder written by ``arvision export``), any
timm ViT exported with ``torch.save`` or timm's ``save_for_hf``, or one on the Hub
(``hf-hub:ORG/NAME``).

- The architecture comes from the recipe: the timm model name plus the overrides (``img_size``,
  ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``in_chans``, ``class_token``), never
  guessed from the weights. A checkpoint in the Hub layout (folder or ``hf-hub:``) states it in its
  config.json (architecture, model_args), which then stands in for ``model`` and the unset
  overrides, and its pretrained_cfg's mean and std for unset ``mean`` / ``std``. Only the
  classifier side, which does not change the tokens, is read from the weights: ``head.weight``
  sets ``num_classes`` and ``fc_norm.weight`` (an average-pool fine-tune) selects
  ``global_pool='avg'``.
- The file loads strictly (read weights-only, then picked as ``timm.models.load_state_dict``
  does: a bare state dict, or one under ``state_dict``/``model``/EMA keys, ``module.`` prefixes
  removed; from an arvision training checkpoint, the ``encoder.vit.*`` part). Missing,
  unexpected and mis-shaped keys are one :class:`~arvision.errors.CheckpointError` line naming
  the file.
- Tokens: ``layer = None`` gives ``forward_features`` (after the final ``norm``; a model with
  ``fc_norm`` has an Identity there, as in timm); ``layer = k`` gives the raw output of block k
  (blocks after k are dropped at build time). Prefix tokens are split off; the class token, when
  the model has one, is the CLS target.
"""

import argparse
import re
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import clean_state_dict, load_state_dict
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from arvision import hookimpl
from arvision.checkpoint import UnreadableFile, read_weights_only
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import model_override, positive, setting
from arvision.errors import CheckpointError, listed
from arvision.model.timm_folder import TimmFolder, is_timm_folder, read_timm_folder
from arvision.model.vit import channel_stat, create_vit, shape_overrides
from arvision.precision import autocast

__all__ = ["ARVISION_ENCODER", "TimmTeacher", "TimmTeacherConfig", "hub_config", "load_error",
           "normalisation", "prepare_images", "teacher_vit"]

#: Where an arvision training checkpoint keeps the encoder's timm ViT in its "model" state.
ARVISION_ENCODER = "encoder.vit."


@attrs.frozen
class TimmTeacherConfig:
    model: str | None = setting(None, "timm name of a VisionTransformer (vit_base_patch16_224, "
                                "...); unset: the architecture in the checkpoint's config.json")
    checkpoint: str | None = setting(
        None, "weights, strictly loaded: a timm state dict file, an arvision training checkpoint "
        "(its encoder), a folder written by `arvision export` or timm's save_for_hf, or "
        "hf-hub:ORG/NAME; none: random weights, for smoke tests only")
    layer: int | None = setting(None, "none: the final normed tokens; k: the output of block k "
                                "(1-based)", validator=positive)
    size: int | None = setting(None, "teacher input side in pixels (default: the model's img_size; "
                               "another size interpolates the position embedding)",
                               validator=positive)
    img_size: int | None = model_override("img_size the model is built with")
    patch_size: int | None = model_override("patch size")
    embed_dim: int | None = model_override("token width")
    depth: int | None = model_override("number of blocks")
    num_heads: int | None = model_override("attention heads")
    in_chans: int | None = setting(None, "input channels (default: the model's; 1-channel images "
                                   "are repeated to fill them)", validator=positive)
    class_token: bool | None = setting(None, "the model has a class token (default: the model's)")
    mean: tuple[float, ...] | None = setting(
        None, "input normalisation mean (one value or one per channel; default: the checkpoint "
        "folder's, else ImageNet's); an arvision checkpoint file expects its recipe's encoder.mean")
    std: tuple[float, ...] | None = setting(None, "input normalisation std (default: the "
                                            "checkpoint folder's, else ImageNet's)")
    precision: Literal["auto", "bf16", "fp32"] = setting(
        "auto", "autocast dtype of the teacher forward ('auto': bf16 where the device computes it "
        "natively, as train.precision)")


def hub_config(config: TimmTeacherConfig) -> TimmFolder | None:
    """The config.json of a Hub-layout checkpoint (folder, local-dir:, hf-hub:), else None."""
    if not is_timm_folder(config.checkpoint):
        return None
    folder = read_timm_folder(config.checkpoint, "tokenizer.checkpoint")
    if config.model is not None and config.model != folder.architecture:
        raise ValueError(f"tokenizer.model: {config.model!r} is not the architecture of "
                         f"{config.checkpoint} ({folder.architecture!r}); leave tokenizer.model unset")
    return folder


def teacher_vit(config: TimmTeacherConfig, folder: TimmFolder | None = None, **kwargs: Any
                ) -> VisionTransformer:
    """The configured timm ViT (random weights) on the current default device; ``folder``: the
    checkpoint's config.json, whose architecture and arguments fill what the recipe leaves unset."""
    model, arguments = config.model, {}
    if folder is not None:
        model, arguments = folder.architecture, dict(folder.model_args)
    if model is None:
        raise ValueError("tokenizer.model: required unless tokenizer.checkpoint is a folder in the "
                         "Hub layout or hf-hub:ORG/NAME")
    overrides = {key: value for key, value in shape_overrides(config).items() if value is not None}
    return create_vit(model, "tokenizer.model", registers=True,
                      **{**arguments, **overrides, **kwargs})


def normalisation(config: TimmTeacherConfig, folder: TimmFolder | None, name: str
                  ) -> tuple[float, ...]:
    """``tokenizer.mean`` / ``std``, else the checkpoint folder's, else ImageNet's."""
    default = IMAGENET_DEFAULT_MEAN if name == "mean" else IMAGENET_DEFAULT_STD
    return getattr(config, name) or (folder.stat(name) if folder else None) or tuple(default)


def prepare_images(images: Tensor, size: int, channels: int, mean: Tensor, std: Tensor) -> Tensor:
    """Images (B, C, H, W) in [0, 1] -> (B, channels, size, size), bicubic, then normalised."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
    if images.shape[1] != channels:  # grey images for an RGB teacher
        images = images.expand(-1, channels, -1, -1)
    return (images - mean) / std


def check_channels(image: ImageSpec, channels: int) -> None:
    if image.channels not in (1, channels):
        raise ValueError(f"the teacher reads {channels}-channel images; the data has "
                         f"{image.channels} channels")


class TimmTeacher(Tokenizer):
    """A timm ViT + checkpoint as feature teacher: tokens (B, h, w, D), class token as CLS (B, D).

    Final normed tokens, or with ``layer = k`` the output of block k; no CLS without a class token.
    """

    @classmethod
    def token_spec(cls, config: TimmTeacherConfig, image: ImageSpec) -> TokenSpec:
        folder = hub_config(config)  # config.json at most: no weights read
        vit = _meta_vit(config, folder)
        size, patch = config.size or vit.patch_embed.img_size[0], vit.patch_embed.patch_size[0]
        if size % patch:
            raise ValueError(f"tokenizer: patch size {patch} does not divide the input size {size}")
        if config.layer is not None and config.layer > len(vit.blocks):
            raise ValueError(f"tokenizer.layer {config.layer} is past the model's "
                             f"{len(vit.blocks)} blocks")
        check_channels(image, vit.patch_embed.proj.in_channels)
        for what in ("mean", "std"):
            channel_stat(normalisation(config, folder, what), vit.patch_embed.proj.in_channels,
                         f"tokenizer.{what}")
        return TokenSpec(grid=(size // patch, size // patch), dim=vit.embed_dim, discrete=False,
                         cls=vit.cls_token is not None)

    def __init__(self, config: TimmTeacherConfig, image: ImageSpec) -> None:
        super().__init__(config, image)
        folder = hub_config(config)
        if folder is not None:
            state = folder.weights()
        elif config.checkpoint is not None:
            state = read_state_dict(Path(config.checkpoint).expanduser())
        else:
            state = {}
        head = {"num_classes": state["head.weight"].shape[0] if "head.weight" in state else 0,
                "global_pool": "avg" if "fc_norm.weight" in state else ""}
        # Another input size than the model's interpolates the position embedding on the fly.
        resized = config.size not in (None, _meta_vit(config, folder).patch_embed.img_size[0])
        self.vit = teacher_vit(config, folder, **head,
                               **({"dynamic_img_size": True} if resized else {}))
        if config.checkpoint is not None:
            load_strict(self.vit, state, f"tokenizer.checkpoint {config.checkpoint}",
                        folder.architecture if folder else config.model)
        if config.layer is not None:  # keep blocks 1..k; no final norm, no head
            self.vit.prune_intermediate_layers([config.layer - 1], prune_norm=True)
        channels = self.vit.patch_embed.proj.in_channels
        for name in ("mean", "std"):
            self.register_buffer(name, channel_stat(normalisation(config, folder, name), channels,
                                                    f"tokenizer.{name}"), persistent=False)
        self.freeze()

    def forward(self, images: Tensor) -> Tokens:
        h, w = self.spec.grid
        x = prepare_images(images, h * self.vit.patch_embed.patch_size[0],
                           self.vit.patch_embed.proj.in_channels, self.mean, self.std)
        with autocast(x.device, self.config.precision):
            x = self.vit.forward_features(x)  # (B, P + h*w, D): final norm, or block k (pruned)
        x = x.float()
        tokens = x[:, self.vit.num_prefix_tokens:].reshape(x.shape[0], h, w, -1)  # (B, h, w, D)
        cls = x[:, 0] if self.vit.cls_token is not None else None  # (B, D)
        return Tokens(tokens, cls)


def _meta_vit(config: TimmTeacherConfig, folder: TimmFolder | None) -> VisionTransformer:
    with torch.device("meta"):
        return teacher_vit(config, folder, num_classes=0, global_pool="")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict read the way timm reads ``checkpoint_path``, or a one-line CheckpointError."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"tokenizer.checkpoint {path} {what}")
    try:
        state = _timm_state_dict(path)
    except UnreadableFile as exc:
        raise CheckpointError(f"tokenizer.checkpoint {path} is not a readable weights file "
                              f"({exc.reason})") from None
    except CheckpointError:  # holds more than weights: refused, and said so
        raise
    except Exception as exc:
        raise CheckpointError(f"tokenizer.checkpoint {path} is not a readable weights file "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not any(key.startswith(ARVISION_ENCODER) for key in state):
        return state
    # An arvision training checkpoint ({"model": ARModel state}): its encoder is a timm ViT.
    return {key.removeprefix(ARVISION_ENCODER): value for key, value in state.items()
            if key.startswith(ARVISION_ENCODER)}


def _timm_state_dict(path: Path) -> dict[str, Any]:
    """``timm.models.load_state_dict(path)``, with the pickle read by arvision's weights-only
    reader: the EMA weights if any, else those under ``state_dict`` or ``model``, else the whole."""
    if path.suffix == ".safetensors":  # no pickle in it
        return load_state_dict(str(path))
    checkpoint = read_weights_only(path, "tokenizer.checkpoint", allow=[argparse.Namespace])
    if isinstance(checkpoint, dict):
        ema = [key for key in ("state_dict_ema", "model_ema") if checkpoint.get(key) is not None]
        keys = ema + [key for key in ("state_dict", "model") if key in checkpoint]
        checkpoint = checkpoint[keys[0]] if keys else checkpoint
    return clean_state_dict(checkpoint)


def load_strict(module: nn.Module, state: dict[str, Tensor], what: str, model: str) -> None:
    """``module.load_state_dict(state)``, strictly, failing with :func:`load_error`."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise load_error(what, model, exc) from None


def load_error(what: str, model: str, exc: BaseException) -> CheckpointError:
    """One line for a file that does not load into ``model``: torch's strict-load report condensed
    to a few missing, unexpected and mis-shaped keys, under ``what`` (naming the file)."""
    text = str(exc)
    if "Error(s) in loading state_dict" not in text:
        return CheckpointError(f"{what} does not load into {model}: {type(exc).__name__}: "
                               f"{_first_line(exc)}")
    parts = []
    for label in ("Missing", "Unexpected"):
        found = re.search(rf"{label} key\(s\) in state_dict: (.*)", text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{label.lower()} keys {listed(keys)}")
    shapes = re.findall(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) "
                        r"from checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)", text)
    if shapes:
        parts.append("shape mismatch " + listed([f"{key} ({file} in the file, {model} in the model)"
                                                for key, file, model in shapes]))
    return CheckpointError(f"{what} does not fit {model} as configured: {'; '.join(parts)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


@hookimpl
def register_tokenizers(register):
    register("timm", TimmTeacher, TimmTeacherConfig)
