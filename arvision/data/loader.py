"""From a recipe's ``[data]`` table to a resumable loader of student-sized images in [0, 1]."""

import warnings

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..recipe.schema import DataConfig
from .sampler import Augmented, Batches, EpochSampler
from .sources import build_dataset
from .target_cache import CachedViews, TargetCache
from .views import ViewAugment

__all__ = ["Transformed", "build_batches", "build_dataset", "build_loader", "keyed_batches"]

# torchdata 0.11 calls a deprecated torch API on every loader; the warning is not actionable here.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


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
