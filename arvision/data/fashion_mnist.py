"""Fashion-MNIST read straight from its IDX files (gzip or raw) into memory."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor
from torch.utils.data import Dataset

from arvision.errors import DataError

__all__ = ["CLASSES", "DEFAULT_ROOT", "FashionMNIST"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dims
_LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dim
_PIXEL_MAX = torch.iinfo(torch.uint8).max
_INSTALL_HINT = "install it with 'apt-get install dataset-fashion-mnist' or set data.root"


def _locate(root: Path, name: str) -> Path:
    """Return the .gz file for ``name`` if present, else the raw one, else raise DataError."""
    gz = root / f"{name}.gz"
    for candidate in (gz, root / name):
        if candidate.is_file():
            return candidate
    where = "" if root.is_dir() else f" (directory {root} does not exist)"
    raise DataError(f"Fashion-MNIST not found: {gz} is missing{where}; {_INSTALL_HINT}")


def _read_exact(stream: BinaryIO, size: int, path: Path, what: str) -> bytes:
    """Read exactly ``size`` bytes or raise DataError saying the file is truncated."""
    data = stream.read(size)
    if len(data) != size:
        raise DataError(
            f"corrupt Fashion-MNIST file {path}: truncated {what} "
            f"(expected {size} bytes, got {len(data)})"
        )
    return data


def _read_idx(
    path: Path, magic: int, item_shape: tuple[int, ...], limit: int | None
) -> tuple[Tensor, int]:
    """Read an unsigned-byte IDX file; return its first records ``(N, *item_shape)`` uint8
    and the record count its header declares.

    Only the first ``limit`` records are decoded when ``limit`` is given; when the whole
    file is read, trailing bytes and a broken gzip trailer are reported as corruption.
    """
    ndims = magic & 0xFF
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            header = _read_exact(stream, 4 * (1 + ndims), path, "header")
            found_magic, *dims = struct.unpack(f">{1 + ndims}I", header)
            if found_magic != magic:
                raise DataError(
                    f"corrupt Fashion-MNIST file {path}: magic number {found_magic:#010x}, "
                    f"expected {magic:#010x}"
                )
            count, shape = dims[0], tuple(dims[1:])
            if shape != item_shape:
                raise DataError(
                    f"corrupt Fashion-MNIST file {path}: item shape {shape}, expected {item_shape}"
                )
            keep = count if limit is None else min(limit, count)
            payload = _read_exact(stream, keep * math.prod(item_shape), path, "data")
            if keep == count and stream.read(1):
                raise DataError(
                    f"corrupt Fashion-MNIST file {path}: extra bytes after the {count} "
                    "records its header declares"
                )
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"corrupt Fashion-MNIST file {path}: {reason}") from None
    values = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    return values.reshape(keep, *item_shape), count


class FashionMNIST(Dataset):
    """Fashion-MNIST held in memory; items are ``(image (1, 28, 28) float in [0, 1], label)``.

    ``split`` is ``"train"`` (60000 images) or ``"test"`` (the 10000 t10k images);
    ``limit`` keeps only the first ``limit`` examples (and decodes only those).
    """

    image_size = 28
    channels = 1
    classes = CLASSES
    num_classes = len(CLASSES)

    def __init__(
        self,
        root: str | Path = DEFAULT_ROOT,
        split: str = "train",
        limit: int | None = None,
    ) -> None:
        if split not in _SPLIT_PREFIX:
            choices = ", ".join(repr(s) for s in _SPLIT_PREFIX)
            raise DataError(f"Fashion-MNIST split {split!r} is unknown; expected one of {choices}")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        self.root = Path(root)
        self.split = split
        prefix = _SPLIT_PREFIX[split]
        image_path = _locate(self.root, f"{prefix}-images-idx3-ubyte")
        label_path = _locate(self.root, f"{prefix}-labels-idx1-ubyte")
        side = self.image_size
        images, image_count = _read_idx(image_path, _IMAGE_MAGIC, (side, side), limit)
        labels, label_count = _read_idx(label_path, _LABEL_MAGIC, (), limit)
        if image_count != label_count:
            raise DataError(
                f"corrupt Fashion-MNIST split {split!r}: {image_path} holds {image_count} "
                f"images but {label_path} holds {label_count} labels"
            )
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise DataError(
                f"corrupt Fashion-MNIST file {label_path}: label {int(labels.max())} found, "
                f"expected 0..{self.num_classes - 1}"
            )
        self._images = images  # (N, H, W) uint8
        self._labels = labels.to(torch.int64)  # (N,)

    @property
    def labels(self) -> Tensor:
        """All labels as an int64 tensor ``(N,)``."""
        return self._labels

    def __len__(self) -> int:
        return self._labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self._images[index].unsqueeze(0).to(torch.float32) / _PIXEL_MAX  # (1, H, W)
        return image, int(self._labels[index])
