"""From a recipe's ``[data]`` table to a resumable loader of student-sized images in [0, 1]."""

import warnings

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms import v2

from ..recipe import DataConfig
from .fashion_mnist import FashionMNIST
from .synthetic import SyntheticImages

__all__ = ["Transformed", "build_dataset", "build_loader"]

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
    kwargs = {"root": config.root} if config.root else {}
    return FashionMNIST(split=split, limit=config.limit, **kwargs)


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


def train_transform(config: DataConfig, size: int):
    steps = [v2.Resize((size, size), antialias=True)]
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def build_loader(dataset: Dataset, config: DataConfig, batch_size: int, size: int, seed: int,
                 drop_last: bool = True) -> StatefulDataLoader:
    """Shuffled (seeded) batches of images resized to ``size``; its state can be checkpointed."""
    generator = torch.Generator().manual_seed(seed)
    return StatefulDataLoader(
        Transformed(dataset, train_transform(config, size)), batch_size=batch_size, shuffle=True,
        drop_last=drop_last, num_workers=config.num_workers, generator=generator,
        persistent_workers=config.num_workers > 0, pin_memory=torch.cuda.is_available(),
    )
