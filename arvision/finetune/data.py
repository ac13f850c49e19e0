"""Fine-tuning data: timm's transforms, made repeatable per sample, and the batch mixing.

    train: RandomResizedCrop (data.crop_scale) + flip -> RandAugment -> to tensor -> normalise
           -> random erasing                                   (timm create_transform, per image)
           batch -> mixup / cutmix with smoothed soft targets  (timm Mixup, in the step)
    eval:  resize to img_size / eval_crop -> centre crop -> to tensor -> normalise

timm's transforms draw from the global RNGs (torch, ``random``, numpy). :class:`SeededTransform`
runs each one under the seed of its ``(epoch, index)`` key and restores the RNGs after, so a
sample looks the same whichever worker renders it and a resumed run sees the same images.
"""

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import AugmentOp
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import to_pil_image

from ..errors import DataError
from ..model.vit import channel_stat
from ..recipe import DataConfig
from ..seeds import sample_seed
from .recipe import FinetuneRecipe

__all__ = ["MixedInputs", "SeededTransform", "count_classes", "eval_transform", "seeded",
           "train_transform"]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG, ``random`` and numpy with ``seed``; restore all three afterwards."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def _geometry(recipe: FinetuneRecipe, size: int, channels: int) -> dict[str, Any]:
    def per_channel(values: tuple[float, ...]) -> tuple[float, ...]:  # one value or one per channel
        return tuple(channel_stat(values, channels).flatten().tolist())

    return {"input_size": (channels, size, size), "interpolation": recipe.data.interpolation,
            "mean": per_channel(recipe.encoder.mean), "std": per_channel(recipe.encoder.std)}


def posterize(image: Image.Image, bits: int, **_kwargs: Any) -> Image.Image:
    """timm's posterize, also for the 0 bits its increasing policy reaches at magnitude 10: a black
    image, as older Pillow made it (Pillow 13 raises ValueError for 0 bits)."""
    if bits >= 8:
        return image
    return ImageOps.posterize(image, bits) if bits > 0 else Image.new(image.mode, image.size)


def _posterize_any_bits(transform) -> None:
    """Give every posterize op of timm's RandAugment inside ``transform`` :func:`posterize`."""
    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if isinstance(op, AugmentOp) and op.name.startswith("Posterize"):
                op.aug_fn = posterize


def train_transform(recipe: FinetuneRecipe, size: int, channels: int):
    """timm's training transform for PIL images, as the recipe configures it."""
    data, tune = recipe.data, recipe.finetune
    transform = create_transform(
        **_geometry(recipe, size, channels), is_training=True,
        scale=data.crop_scale or (1.0, 1.0), ratio=None if data.crop_scale else (1.0, 1.0),
        hflip=0.5 if data.flip else 0.0, color_jitter=None,
        auto_augment=None if tune.auto_augment == "none" else tune.auto_augment,
        re_prob=tune.reprob, re_mode="pixel", re_count=1)
    _posterize_any_bits(transform)
    return transform


def eval_transform(recipe: FinetuneRecipe, size: int, channels: int):
    return create_transform(**_geometry(recipe, size, channels), is_training=False,
                            crop_pct=recipe.finetune.eval_crop)


class SeededTransform(Dataset):
    """``(image, label)`` items, indexed by ``(epoch, index)`` keys, rendered by a PIL transform
    under the key's seed. Images are float tensors (C, H, W) in [0, 1] or uint8."""

    def __init__(self, dataset: Dataset, transform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        epoch, index = key
        image, label = self.dataset[index]
        with seeded(sample_seed(self.seed, epoch, index)):
            return self.transform(to_pil_image(image)), label


def count_classes(dataset: Dataset, config: DataConfig, source: str) -> int:
    """Classes of a data set: its ``num_classes`` or ``classes``, else the synthetic setting."""
    for owner in (dataset, getattr(dataset, "dataset", None)):  # a Subset wraps the source
        count = getattr(owner, "num_classes", None)
        if count is None and getattr(owner, "classes", None) is not None:
            count = len(owner.classes)
        if count:
            return int(count)
    if config.source == "synthetic":
        return config.synthetic.num_classes
    raise DataError(f"{source}: data: cannot tell how many classes {config.source!r} has; set "
                    "finetune.num_classes")


class MixedInputs:
    """The fine-tuning step's inputs: images and targets on the device, mixed by timm's Mixup
    (mixup / cutmix with smoothed soft targets), or class ids when mixing is off."""

    def __init__(self, recipe: FinetuneRecipe, num_classes: int) -> None:
        tune = recipe.finetune
        self.mixup = None
        if tune.mixup > 0 or tune.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=tune.mixup, cutmix_alpha=tune.cutmix,
                               prob=tune.mix_prob, switch_prob=tune.switch_prob, mode="batch",
                               label_smoothing=tune.label_smoothing, num_classes=num_classes)

    def __call__(self, batch: Sequence[Tensor], device: torch.device) -> dict[str, Tensor]:
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)  # labels -> (B, classes) soft targets
        return {"images": images, "targets": labels}
