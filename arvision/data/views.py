"""Augmented views with explicit parameters: a crop box and a flip, drawn from a given generator.

A view is data, not a side effect of a transform's hidden RNG: the target cache stores the views
it ran the teacher on, and training replays exactly those crops. The crop follows torchvision's
``RandomResizedCrop`` (area fraction in ``scale``, log-uniform aspect ratio, ten tries, then a
central crop); here the draws come from the caller's generator.
"""

import math

import attrs
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..recipe import DataConfig

__all__ = ["View", "ViewAugment", "draw_view"]

RATIO = (3 / 4, 4 / 3)


@attrs.frozen
class View:
    """A crop box (in source pixels) and whether the crop is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    def as_tensor(self) -> Tensor:
        return torch.tensor([self.top, self.left, self.height, self.width, int(self.flip)])

    @classmethod
    def from_tensor(cls, values: Tensor) -> "View":
        top, left, height, width, flip = values.tolist()
        return cls(top, left, height, width, bool(flip))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def draw_view(generator: torch.Generator, height: int, width: int,
              scale: tuple[float, float] | None, flip: bool) -> View:
    """A random crop of an ``height x width`` image (the whole image when ``scale`` is None)."""
    box = (0, 0, height, width)
    if scale is not None:
        box = _crop_box(generator, height, width, scale)
    mirrored = flip and torch.rand((), generator=generator).item() < 0.5
    return View(*box, mirrored)


def _crop_box(generator, height, width, scale) -> tuple[int, int, int, int]:
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height  # fall back to a central crop of the nearest allowed ratio
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewAugment:
    """Draws a view per sample and renders it at the student's size, float in [0, 1]."""

    def __init__(self, config: DataConfig, size: int) -> None:
        self.size = size
        self.scale = config.crop_scale
        self.flip = config.flip
        self.interpolation = getattr(InterpolationMode, config.interpolation.upper())

    def draw(self, image: Tensor, generator: torch.Generator) -> View:
        return draw_view(generator, image.shape[-2], image.shape[-1], self.scale, self.flip)

    def render(self, image: Tensor, view: View) -> Tensor:
        """Image (C, H, W) -> the view's crop resized to (C, size, size)."""
        x = TF.resized_crop(image, view.top, view.left, view.height, view.width,
                            [self.size, self.size], interpolation=self.interpolation,
                            antialias=True)
        if view.flip:
            x = TF.horizontal_flip(x)
        return x.to(torch.float32).clamp(0, 1)
