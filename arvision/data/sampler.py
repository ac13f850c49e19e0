"""Deterministic, resumable data order: every random choice is a function of (seed, epoch, index).

The sampler yields ``(epoch, index)`` keys, each rank taking its share of one seeded permutation per
epoch; :class:`Augmented` seeds the augmentation of each sample from its key and hands the key's
seed on with the item, for the step's own per-sample draws (segment orders). So a sample looks and
is ordered the same whichever worker loads it and however many ranks train, and a resumed run
(torchdata's ``StatefulDataLoader`` fast-forwards the sampler within the epoch) sees exactly the
batches the uninterrupted run would have.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from ..seeds import sample_seed, seeded_generator
from .views import ViewAugment

__all__ = ["Augmented", "Batches", "EpochSampler", "sample_seed"]


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(epoch, index)`` keys; rank r of w takes every w-th of the permutation."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.size, generator=generator)[: len(self) * self.world]
        for index in order[self.rank :: self.world].tolist():
            yield self.epoch, index


class Augmented(Dataset):
    """``(image, label, seed)`` items: the image rendered as a view drawn from its ``(epoch,
    index)`` key, and that key's seed (:func:`~arvision.seeds.sample_seed`)."""

    def __init__(self, dataset: Dataset, augment: ViewAugment, seed: int) -> None:
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, label = self.dataset[index]
        seed = sample_seed(self.seed, epoch, index)
        view = self.augment.draw(image, seeded_generator(seed))
        return self.augment.render(image, view), label, seed


class Batches:
    """Endless batches, epoch after epoch, with a state that resumes mid-epoch."""

    def __init__(self, loader: StatefulDataLoader, sampler: EpochSampler) -> None:
        self.loader, self.sampler = loader, sampler
        self.epoch = 0
        self._iterator: Iterator | None = None

    def __next__(self):
        while True:
            if self._iterator is None:
                self.sampler.set_epoch(self.epoch)
                self._iterator = iter(self.loader)
            try:
                return next(self._iterator)
            except StopIteration:
                self.epoch += 1
                self._iterator = None

    def __iter__(self) -> "Batches":
        return self

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.loader)

    @property
    def dataset_size(self) -> int:
        return len(self.loader.dataset)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.sampler.set_epoch(self.epoch)
        self.loader.load_state_dict(state["loader"])
        self._iterator = None
