"""An open_clip vision tower as a feature teacher (tokenizer ``clip``): D-iGPT's CLIP targets.

D-iGPT (arXiv 2312.02147) predicts the patch tokens and the CLS of OpenCLIP ViT-H/14 after
``ln_post`` and the projection: 16x16x1024 plus a 1024-d CLS at 224 px. This tokenizer gives that
for any open_clip ViT by name, or the raw output of one of its blocks (``layer``).

Weights, ``pretrained``:
- an open_clip pretrained tag of the model (``open_clip.list_pretrained_tags_by_model``): resolved
  by ``open_clip.download_pretrained``, i.e. from the Hugging Face cache (``cache_dir``, else
  ``HF_HOME``) or open_clip's URL cache (``~/.cache/clip``), downloading only when that is allowed.
  A tag trained with QuickGELU builds the model with QuickGELU (open_clip itself only warns).
- otherwise a checkpoint file (a full CLIP state dict, as ``torch.save(model.state_dict())``
  writes, or any file ``open_clip.load_checkpoint`` reads).
Either way the file goes through ``open_clip.create_model(name, pretrained=FILE)``: its strict
load, format conversions and position-embedding resize (for ``size``). Only the vision tower is
kept. Every failure is one :class:`~arvision.errors.CheckpointError` line naming the tag or file.

Tokens (open_clip 3.3 ``VisionTransformer``): the last block's output ``x`` (B, 1 + h*w, width)
gives tokens ``ln_post(x[:, 1:]) @ proj`` and CLS ``ln_post(x[:, 0]) @ proj``, which is open_clip's
pooled output when ``pool_type == 'tok'`` (used as is then; with ``final_ln_after_pool`` too, as
LayerNorm is per token). ``output_tokens=True`` would give the tokens before ``proj``.
Input: [0, 1] images, bicubic to ``size``, normalised with the tag's mean/std (CLIP's
``OPENAI_DATASET_MEAN``/``STD`` for a file), under bf16 autocast where the device computes bf16
natively (``precision = "auto"``).
"""

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import attrs
import huggingface_hub.constants
import open_clip
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import VisionTransformer
from torch import Tensor

from arvision import hookimpl
from arvision.checkpoint import refuse_unsafe_file
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import positive, setting
from arvision.errors import CheckpointError
from arvision.model.vit import channel_stat
from arvision.precision import autocast

from .timm_teacher import check_channels, load_error, prepare_images

__all__ = ["ClipConfig", "ClipTokenizer", "model_config", "resolve_pretrained"]



@attrs.frozen
class ClipConfig:
    model: str = setting("ViT-H-14", "open_clip model name (open_clip.list_models())")
    pretrained: str = setting(
        "laion2b_s32b_b79k", "open_clip pretrained tag of the model (from the local open_clip/"
        "Hugging Face cache, downloaded where allowed), or the path of a checkpoint file")
    layer: int | None = setting(None, "none: the final tokens after ln_post and the projection; "
                                "k: the output of block k (1-based), unprojected", validator=positive)
    size: int | None = setting(None, "teacher input side in pixels (default: the model's "
                               "image_size)", validator=positive)
    precision: Literal["auto", "bf16", "fp32"] = setting(
        "auto", "autocast dtype of the teacher forward ('auto': bf16 where the device computes it "
        "natively, as train.precision)")
    mean: tuple[float, ...] | None = setting(None, "input normalisation mean (default: the tag's, "
                                             "CLIP's for a file)")
    std: tuple[float, ...] | None = setting(None, "input normalisation std (default: the tag's, "
                                            "CLIP's for a file)")
    cache_dir: str | None = setting(None, "where tags are looked up and downloaded (default: "
                                    "open_clip's: the Hugging Face cache, ~/.cache/clip)")


def model_config(name: str) -> dict[str, Any]:
    """open_clip's config of a named model with a plain ViT vision tower, or a ValueError."""
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"tokenizer.model {name!r}: give an open_clip model name and set "
                         "tokenizer.pretrained to a tag or a checkpoint file")
    config = open_clip.get_model_config(name)
    if config is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=4, cutoff=0.6)
        hint = f"close: {', '.join(close)}" if close else "see open_clip.list_models()"
        raise ValueError(f"tokenizer.model: unknown open_clip model {name!r} ({hint})")
    vision = config["vision_cfg"]
    other = ("a timm vision tower" if "timm_model_name" in vision else
             "a ResNet vision tower" if isinstance(vision.get("layers"), list | tuple) else
             "attentional pooling" if vision.get("attentional_pool") else None)
    if other:
        raise ValueError(f"tokenizer.model: {name} has {other}; the clip tokenizer takes open_clip "
                         "ViTs with a class token (the 'timm' tokenizer takes timm ViTs)")
    return config


def _side(value: int | list[int], what: str, name: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"tokenizer.model: {name} has a non-square {what} {value}")
        value = value[0]
    return value


def resolve_pretrained(config: ClipConfig, name: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file of ``config.pretrained`` and the tag's open_clip config ({} for a file)."""
    tag = open_clip.get_pretrained_cfg(name, config.pretrained)
    if tag:
        try:
            return Path(_download(tag, config.cache_dir)), tag
        except Exception as exc:
            offline = huggingface_hub.constants.is_offline_mode()
            why = "HF_HUB_OFFLINE is set" if offline else f"no network? {type(exc).__name__}"
            source = f"hf-hub:{tag['hf_hub']}" if tag.get("hf_hub") else tag.get("url", "")
            raise CheckpointError(
                f"tokenizer.pretrained {config.pretrained!r} for {name} is not in the local "
                f"open_clip/Hugging Face cache and cannot be downloaded ({why}); download it "
                f"({source}) elsewhere and set tokenizer.pretrained to the checkpoint file"
            ) from None
    path = Path(config.pretrained).expanduser()
    if path.is_file():
        return path, {}
    if path.is_dir():
        raise CheckpointError(f"tokenizer.pretrained {path} is a directory; give the checkpoint file")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
    raise CheckpointError(f"tokenizer.pretrained {config.pretrained!r}: no such file, and not a "
                          f"pretrained tag of {name} (tags: {tags})")


def _download(tag: dict[str, Any], cache_dir: str | None) -> str:
    """``open_clip.download_pretrained``, not trying a URL at all when the hub is offline."""
    if huggingface_hub.constants.is_offline_mode() and not tag.get("hf_hub") and tag.get("url"):
        cached = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(tag["url"])
        if not cached.is_file():
            raise FileNotFoundError(cached)
    return open_clip.download_pretrained(tag, cache_dir=cache_dir)


class ClipTokenizer(Tokenizer):
    """D-iGPT's teacher: open_clip ViT tokens (B, h, w, D) + CLS (B, D) after ln_post and proj.

    With ``layer = k``: the raw (unprojected) output of block k instead.
    """

    @classmethod
    def token_spec(cls, config: ClipConfig, image: ImageSpec) -> TokenSpec:
        name = config.model.replace("/", "-")  # ViT-H/14 -> ViT-H-14, as open_clip does
        spec = model_config(name)  # open_clip's json: nothing is built or read
        vision = spec["vision_cfg"]
        size = config.size or _side(vision["image_size"], "image_size", name)
        patch = _side(vision["patch_size"], "patch_size", name)
        if size % patch:
            raise ValueError(f"tokenizer.size {size} is not a multiple of {name}'s patch size {patch}")
        if config.layer is not None and config.layer > vision["layers"]:
            raise ValueError(f"tokenizer.layer {config.layer} is past {name}'s {vision['layers']} "
                             "blocks")
        check_channels(image, 3)
        for what in ("mean", "std"):
            channel_stat(getattr(config, what) or (0.0,), 3, f"tokenizer.{what}")
        dim = spec["embed_dim"] if config.layer is None else vision["width"]
        return TokenSpec(grid=(size // patch, size // patch), dim=dim, discrete=False, cls=True)

    def __init__(self, config: ClipConfig, image: ImageSpec) -> None:
        super().__init__(config, image)
        name = config.model.replace("/", "-")
        vision = model_config(name)["vision_cfg"]
        path, tag = resolve_pretrained(config, name)
        refuse_unsafe_file(path, "tokenizer.pretrained checkpoint")  # before open_clip unpickles it
        self.size = self.spec.grid[0] * _side(vision["patch_size"], "patch_size", name)
        resize = {} if self.size == _side(vision["image_size"], "image_size", name) else {
            "force_image_size": self.size}  # the checkpoint's position embedding is resampled
        try:
            model = open_clip.create_model(
                name, pretrained=str(path), force_quick_gelu=bool(tag.get("quick_gelu")),
                pretrained_text=False, **resize)
        except Exception as exc:  # strict load, unreadable file, foreign format
            what = f"tokenizer.pretrained {path}" + (f" (tag {config.pretrained!r})" if tag else "")
            raise load_error(what, name, exc) from None
        self.visual: VisionTransformer = model.visual  # the text tower goes with ``model``
        if config.layer is not None:  # keep blocks 1..k; drop ln_post and proj
            self.visual.prune_intermediate_layers([config.layer - 1], prune_norm=True)
        mean = config.mean or tag.get("mean", OPENAI_DATASET_MEAN)
        std = config.std or tag.get("std", OPENAI_DATASET_STD)
        self.register_buffer("mean", channel_stat(tuple(mean), 3, "tokenizer.mean"), persistent=False)
        self.register_buffer("std", channel_stat(tuple(std), 3, "tokenizer.std"), persistent=False)
        self.freeze()

    def forward(self, images: Tensor) -> Tokens:
        h, w = self.spec.grid
        x = prepare_images(images, self.size, 3, self.mean, self.std)  # (B, 3, size, size)
        with autocast(x.device, self.config.precision):
            tokens, cls = self.encode(x)
        return Tokens(tokens.float().reshape(x.shape[0], h, w, -1), cls.float())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images (B, 3, size, size) -> patch tokens (B, h*w, D), CLS (B, D)."""
        visual = self.visual
        if self.config.layer is not None:  # block k's raw output (later blocks were pruned)
            out = visual.forward_intermediates(
                x, indices=[self.config.layer - 1], stop_early=True, intermediates_only=True,
                output_fmt="NLC", output_extra_tokens=True)
            return out["image_intermediates"][0], out["image_intermediates_prefix"][0][:, 0]
        out = visual.forward_intermediates(x, indices=1, output_fmt="NLC", output_extra_tokens=True)
        last, first = out["image_intermediates"][0], out["image_intermediates_prefix"][0]
        tokens = visual.ln_post(last) @ visual.proj  # (B, h*w, width) -> (B, h*w, D)
        if visual.pool_type == "tok":  # open_clip's pooled output is ln_post(CLS) @ proj
            return tokens, out["image_features"]
        return tokens, (visual.ln_post(first) @ visual.proj)[:, 0]  # pooled is not the CLS


@hookimpl
def register_tokenizers(register):
    register("clip", ClipTokenizer, ClipConfig)
