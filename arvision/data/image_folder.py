"""Image folder trees (``ROOT/<class>/<image>``) read with the pack's decoder, bad files reported."""

from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import ImageFolder

from ..errors import DataError
from .images import decode
from .unreadable import BadImageError, SkipBad

__all__ = ["ImageFiles", "image_folder_dataset", "read_image"]


def read_image(path: str, channels: int = 3) -> Tensor:
    """The image file at ``path`` as uint8 ``(channels, H, W)``; :class:`BadImageError` (naming
    the reason, not the file) when it cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImageError(exc.strerror or type(exc).__name__) from None
    return decode(data, channels)


def _load_float(path: str) -> Tensor:
    return read_image(path).to(torch.float32).div_(255)


class ImageFiles(ImageFolder):
    """torchvision's ImageFolder decoding with :func:`read_image` (torchvision, PIL fallback):
    items are ``(image (3, H, W) float in [0, 1], label)``; ``limit`` keeps the first files.
    A file that cannot be decoded raises :class:`BadImageError`."""

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        super().__init__(str(root), loader=_load_float)
        if limit:
            self.samples = self.imgs = self.samples[:limit]
            self.targets = self.targets[:limit]

    def describe(self, index: int) -> str:
        """Item ``index`` named in messages: its file."""
        return self.samples[index][0]


def image_folder_dataset(root: Path, limit: int | None, on_error: str) -> SkipBad:
    """The tree at ``root`` with bad files skipped or fatal (``on_error``); DataError when it is
    missing or holds no image."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} does not exist (expected an image folder tree: "
                        f"{root}/<class>/<image>)")
    try:
        dataset = ImageFiles(root, limit)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"data.root: {root}: {str(exc).splitlines()[0]}") from None
    return SkipBad(dataset, dataset.describe, on_error=on_error)
