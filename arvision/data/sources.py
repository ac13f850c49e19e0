"""The data sources a recipe's ``data.source`` names: what images each yields and how to open it.

Each source answers two questions: the size and channels of its images (known before anything is
read, for the model's geometry; None where images come in any size and are resized), and the
dataset of a split, whose items are ``(image (C, H, W) float in [0, 1], label int)``.
"""

from collections.abc import Callable
from pathlib import Path

import attrs
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..recipe.schema import DataConfig
from .fashion_mnist import FashionMNIST
from .image_folder import image_folder_dataset
from .lmdb_dataset import lmdb_dataset, pack_image_spec
from .synthetic import SyntheticImages

__all__ = ["SOURCES", "DataSource", "build_dataset", "image_spec"]


@attrs.frozen
class DataSource:
    """How one ``data.source`` is read."""

    #: (side or None: any size, channels) of the images, from the config alone (or a manifest)
    image_spec: Callable[[DataConfig], tuple[int | None, int]]
    #: the dataset of a split
    dataset: Callable[[DataConfig, str], Dataset]


def _synthetic(config: DataConfig, split: str) -> Dataset:
    opts = config.synthetic
    dataset = SyntheticImages(opts.num_images, opts.image_size, opts.channels, opts.num_classes,
                              seed=0 if split == "train" else 1)
    if config.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(config.limit, len(dataset))))
    return dataset


def _image_folder(config: DataConfig, split: str) -> Dataset:
    if not config.root:
        raise DataError("data.root: required for source 'imagefolder' (ROOT/SPLIT/<class>/<image>)")
    return image_folder_dataset(Path(config.root) / split, config.limit, config.on_error)


def _fashion_mnist(config: DataConfig, split: str) -> Dataset:
    kwargs = {"root": config.root} if config.root else {}
    return FashionMNIST(split=split, limit=config.limit, **kwargs)


SOURCES: dict[str, DataSource] = {
    "synthetic": DataSource(lambda c: (c.synthetic.image_size, c.synthetic.channels), _synthetic),
    "imagefolder": DataSource(lambda c: (None, 3), _image_folder),
    "lmdb": DataSource(lambda c: pack_image_spec(c.root, c.split), lmdb_dataset),
    "fashion_mnist": DataSource(lambda c: (FashionMNIST.image_size, FashionMNIST.channels),
                                _fashion_mnist),
}


def image_spec(config: DataConfig) -> tuple[int | None, int]:
    """(side, channels) of the images the recipe's source yields (side None: any, resized)."""
    return SOURCES[config.source].image_spec(config)


def build_dataset(config: DataConfig, split: str | None = None) -> Dataset:
    """The recipe's data source (``split`` overrides ``data.split``)."""
    return SOURCES[config.source].dataset(config, split or config.split)
