"""Unreadable images: skipped and counted, or fatal by config, with full batches and exact resume.

A map-style dataset cannot drop an index (the sampler already chose it, and a short batch would
shift every later one), so :class:`SkipBad` answers a bad item ``i`` with the next readable one,
``i + 1``, ``i + 2``, ... wrapping to 0. The substitute depends only on the data, never on timing
or worker, so batches stay full and a resumed run sees exactly the items the first run saw (the
augmentation stays seeded by the requested ``(epoch, index)`` key).
"""

import sys
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["BadImageError", "SkipBad", "warn"]


class BadImageError(DataError):
    """An image that cannot be read or decoded; the message is one line naming the file.

    Raised in a data-loader worker, torch rebuilds it in the main process from a message holding
    the worker's whole traceback (``Caught BadImageError in DataLoader worker process 0. ...``);
    the constructor keeps only the original line, so the CLI still prints one line.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]  # "arvision.data.unreadable.BadImageError: <message>"
            message = last.split(": ", 1)[-1]
        super().__init__(message)


def warn(message: str) -> None:
    """One warning line on stderr, in the CLI's style (workers print theirs directly)."""
    print(f"arvision: warning: {message}", file=sys.stderr, flush=True)


class SkipBad(Dataset):
    """Wraps a dataset whose items may raise :class:`BadImageError`.

    ``on_error="skip"``: a bad item is replaced by the next readable one (see the module doc); each
    bad file is named in one warning line, once per process (so once per data-loader worker that
    meets it), and counted in ``skipped``. ``on_error="raise"``: the first bad item fails the run
    with a one-line :class:`BadImageError` naming it. ``name(index)`` names an item in messages
    (default: the dataset's ``describe``); it must pickle (a bound method does, a lambda does not).
    """

    def __init__(self, dataset: Dataset, name: Callable[[int], str] | None = None,
                 on_error: str = "skip") -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.dataset, self.on_error = dataset, on_error
        self.name = name or dataset.describe
        self.skipped: set[int] = set()  # bad indices met by this process

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, attr: str) -> Any:  # classes, num_classes... of the wrapped dataset
        if attr.startswith("__") or attr in ("dataset", "name", "on_error", "skipped"):
            raise AttributeError(attr)
        return getattr(self.dataset, attr)

    def __getitem__(self, index: int):
        size = len(self.dataset)
        for step in range(size):
            current = (index + step) % size
            try:
                return self.dataset[current]
            except BadImageError as exc:
                error = BadImageError(f"{self.name(current)}: {exc}")
            if self.on_error == "raise":
                raise error
            if current not in self.skipped:
                self.skipped.add(current)
                warn(f"skipped unreadable image {error} (item {current}; the next readable item "
                     "stands in for it)")
        raise DataError(f"no readable image: all {size} items failed to decode "
                        f"(first: {self.name(index)})")
