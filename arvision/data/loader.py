"""From a recipe's ``[data]`` table to a resumable loader of student-sized images in [0, 1]."""

import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..errors import DataError
from ..recipe import DataConfig
from .fashion_mnist import FashionMNIST
from .image_folder import image_folder_dataset
from .lmdb_dataset import lmdb_dataset
from .sampler import Augmented, Batches, EpochSampler
from .synthetic import SyntheticImages
from .target_cache import CachedViews, TargetCache
from .views import ViewAugment

__all__ = ["Transformed", "build_batches", "build_dataset", "build_loader", "keyed_batches"]

# torchdata 0.11 calls a deprecated torch API on every loader; the warning is not actionable here.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def build_dataset(config: DataConfig, split: str | None = None) -> Dataset:
    """The recipe's data source (``split`` overrides ``data.split``)."""
    split = split or config.split
    if config.source == "synthetic":
        opts = config.synthetic
        dataset = SyntheticImages(opts.num_images, opts.image_size, opts.channels,
                                  opts.num_classes, seed=0 if split == "train" else 1)
        if config.limit:
            dataset = torch.utils.data.Subset(dataset, range(min(config.limit, len(dataset))))
        return dataset
    if config.source == "imagefolder":
        return _image_folder(config, split)
    if config.source == "lmdb":
        return lmdb_dataset(config, split)
    kwargs = {"root": config.root} if config.root else {}
    return FashionMNIST(split=split, limit=config.limit, **kwargs)


def _image_folder(config: DataConfig, split: str) -> Dataset:
    if not config.root:
        raise DataError("data.root: required for source 'imagefolder' (ROOT/SPLIT/<class>/<image>)")
    return image_folder_dataset(Path(config.root) / split, config.limit, config.on_error)


class Transformed(Dataset):
    """Applies an image transform to a ``(image, label)`` dataset."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


def build_batches(dataset: Dataset, config: DataConfig, batch_size: int, size: int, seed: int,
                  rank: int = 0, world: int = 1, cache: TargetCache | None = None) -> Batches:
    """Endless seeded batches of images resized or cropped to ``size``, sharded over ranks.

    Batches are ``(images, labels)``, or ``(images, labels, tokens, cls)`` from a target cache.
    The state (``Batches.state_dict``) holds the epoch and torchdata's loader state, so a resumed
    run continues mid-epoch, with workers too.
    """
    augment = ViewAugment(config, size)
    items = Augmented(dataset, augment, seed) if cache is None else \
        CachedViews(dataset, augment, cache, seed)
    return keyed_batches(items, config, batch_size, seed, rank, world)


def keyed_batches(items: Dataset, config: DataConfig, batch_size: int, seed: int, rank: int = 0,
                  world: int = 1) -> Batches:
    """Endless batches of ``items`` (a dataset indexed by ``(epoch, index)`` keys), sharded over
    ranks, each epoch a seeded permutation; resumable mid-epoch through ``Batches.state_dict``."""
    sampler = EpochSampler(len(items), seed, rank, world)
    loader = StatefulDataLoader(
        items, batch_size=batch_size,
        sampler=sampler, drop_last=True, num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(seed),  # never draws from the global RNG
        persistent_workers=config.num_workers > 0, pin_memory=torch.cuda.is_available(),
    )
    return Batches(loader, sampler)


def build_loader(dataset: Dataset, config: DataConfig, batch_size: int, size: int, seed: int
                 ) -> StatefulDataLoader:
    """One rank's loader of :func:`build_batches` (iterate it for one epoch)."""
    return build_batches(dataset, config, batch_size, size, seed).loader
