"""From a recipe's ``[data]`` table to a resumable loader of student-sized images in [0, 1]."""

import functools
import os
import sys
import warnings

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..recipe.schema import DataConfig
from .sampler import Augmented, Batches, EpochSampler
from .sources import build_dataset
from .target_cache import CachedViews, TargetCache
from .views import ViewAugment

__all__ = ["Transformed", "build_batches", "build_dataset", "build_loader", "keyed_batches",
           "worker_count"]

# torchdata 0.11 calls a deprecated torch API on every loader; the warning is not actionable here.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(requested: int) -> int:
    """``data.num_workers``, at most the cores available (more workers only compete for them, and
    torch warns); a capped count is said once, in one line."""
    cores = available_cores()
    if requested <= cores:
        return requested
    _say_capped(requested, cores)
    return cores


@functools.cache
def _say_capped(requested: int, cores: int) -> None:
    print(f"arvision: data.num_workers = {requested} is more than the {cores} CPU cores available; "
          f"using {cores}", file=sys.stderr)


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
    workers = worker_count(config.num_workers)
    loader = StatefulDataLoader(
        items, batch_size=batch_size,
        sampler=sampler, drop_last=True, num_workers=workers,
        generator=torch.Generator().manual_seed(seed),  # never draws from the global RNG
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
    )
    return Batches(loader, sampler)


def build_loader(dataset: Dataset, config: DataConfig, batch_size: int, size: int, seed: int
                 ) -> StatefulDataLoader:
    """One rank's loader of :func:`build_batches` (iterate it for one epoch)."""
    return build_batches(dataset, config, batch_size, size, seed).loader
