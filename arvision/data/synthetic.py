"""Procedural images with learnable structure, for tests and smoke runs without downloads.

Each class is a sinusoidal grating at its own orientation; every image jitters the
orientation, frequency, phase, contrast and colour tint slightly and adds mild noise, so
pixels are predictable from their neighbours and the class is recoverable from the pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SyntheticImages"]

_MASK64 = (1 << 64) - 1
_CYCLES = 2.5  # grating periods across the image width, before jitter
_MIN_PERIOD = 8.0  # pixels: small images get fewer periods so neighbours stay correlated
_ORIENTATION_JITTER = 0.15  # fraction of the angular gap between neighbouring classes
_FREQUENCY_JITTER = 0.1  # relative
_PHASE_JITTER = math.pi / 4  # radians, either way
_CONTRAST = (0.3, 0.4)  # amplitude range around the mid-grey 0.5
_TINT = (0.6, 1.0)  # per-channel amplitude scale range
_CHANNEL_PHASE = math.pi / 4  # phase step between consecutive channels
_NOISE_STD = 0.03


def _splitmix64(value: int) -> int:
    """One round of SplitMix64: a well-mixed 64-bit hash of ``value``."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _item_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed determined by ``(seed, index)`` alone."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) >> 1


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SyntheticImages: {name} must be a positive int, got {value!r}")
    return value


class SyntheticImages(Dataset):
    """Deterministic oriented-grating images; items are ``(image (C, H, W) in [0, 1], label)``.

    Labels cycle through the classes (``index % num_classes``) so classes are balanced;
    image ``index`` depends only on ``(seed, index)``, not on ``num_images``.
    """

    def __init__(
        self,
        num_images: int = 512,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int = 4,
        seed: int = 0,
    ) -> None:
        self.num_images = _check_positive("num_images", num_images)
        self.image_size = _check_positive("image_size", image_size)
        self.channels = _check_positive("channels", channels)
        self.num_classes = _check_positive("num_classes", num_classes)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"SyntheticImages: seed must be an int, got {seed!r}")
        self.seed = seed
        step = 180 / self.num_classes
        self.classes = tuple(f"grating-{k * step:g}deg" for k in range(self.num_classes))
        self._labels = torch.arange(self.num_images, dtype=torch.int64) % self.num_classes
        coords = (torch.arange(self.image_size, dtype=torch.float32) + 0.5) / self.image_size
        coords = coords - 0.5  # (S,) centred, in (-0.5, 0.5)
        self._ys, self._xs = torch.meshgrid(coords, coords, indexing="ij")  # (H, W) each

    @property
    def labels(self) -> Tensor:
        """All labels as an int64 tensor ``(N,)``."""
        return self._labels

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"SyntheticImages index {index} out of range 0..{self.num_images - 1}")
        index %= self.num_images
        label = int(self._labels[index])
        gen = torch.Generator().manual_seed(_item_seed(self.seed, index))

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            return low + (high - low) * torch.rand(shape or (1,), generator=gen)

        gap = math.pi / self.num_classes
        angle = label * gap + gap * _ORIENTATION_JITTER * uniform(-1.0, 1.0)
        base_cycles = min(_CYCLES, self.image_size / _MIN_PERIOD)
        cycles = base_cycles * (1 + _FREQUENCY_JITTER * uniform(-1.0, 1.0))
        phase = uniform(-_PHASE_JITTER, _PHASE_JITTER)
        contrast = uniform(*_CONTRAST)
        tint = uniform(*_TINT, self.channels).view(-1, 1, 1)  # (C, 1, 1)
        along = self._xs * torch.cos(angle) + self._ys * torch.sin(angle)  # (H, W)
        channel_phase = _CHANNEL_PHASE * torch.arange(self.channels).view(-1, 1, 1)  # (C, 1, 1)
        wave = torch.sin(2 * math.pi * cycles * along + phase + channel_phase)  # (C, H, W)
        noise = _NOISE_STD * torch.randn(wave.shape, generator=gen)  # (C, H, W)
        image = 0.5 + contrast * tint * wave + noise  # (C, H, W)
        return image.clamp(0.0, 1.0).to(torch.float32), label
