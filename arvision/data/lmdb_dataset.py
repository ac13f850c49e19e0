"""Images from an LMDB pack (``data.source = "lmdb"``), opened lazily in each process.

lmdb 3.0 refuses to open one path twice in a process, and an environment must not be used across
``fork``: every read goes through :func:`.pack_format.reader`, one handle per path and process, so
each data-loader worker opens its own on its first item. The main process opens the pack when the
dataset is built, to check the manifest against the content.
"""

from pathlib import Path

import lmdb
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .images import decode
from .pack_format import gap_offsets, parse_record, read_json, reader, record_key, validate
from .unreadable import BadImageError, SkipBad

__all__ = ["LmdbImages", "lmdb_dataset", "pack_image_spec", "pack_path"]


def pack_path(root: str | None, split: str) -> Path:
    """The pack of ``split``: ``data.root``, with ``{split}`` replaced by the split's name."""
    if not root:
        raise DataError("data.root: required for source 'lmdb' (the pack, e.g. /data/in1k_{split}.lmdb)")
    return Path(root.replace("{split}", split)).expanduser().resolve()


def pack_image_spec(root: str | None, split: str) -> tuple[int | None, int]:
    """(side or None, channels) of a pack's images from its manifest, without checking it;
    ``(None, 3)`` when the pack cannot be read (the dataset reports that when it is built)."""
    try:
        env, _ = reader(pack_path(root, split))
        manifest = read_json(env, b"manifest") or {}
    except (DataError, lmdb.Error):
        return None, 3
    return manifest.get("image_size"), manifest.get("channels", 3)


class LmdbImages(Dataset):
    """A pack's images as ``(image (C, H, W) float in [0, 1], label)``, in source order.

    Items keep the pack's stored size (shorter side ``short_side``, aspect kept); the loader's
    transform crops or resizes them. ``limit`` keeps the first records. A record that fails to
    decode raises :class:`BadImageError` (wrap in :class:`SkipBad` to skip it).
    """

    def __init__(self, path: str | Path, split: str | None = None, limit: int | None = None) -> None:
        self.path = Path(path)
        env, _ = reader(self.path)
        self.manifest = validate(env, self.path)
        if split is not None and self.manifest.get("split") not in (None, split):
            raise DataError(f"data.split: {split!r}, but the pack {self.path} holds split "
                            f"{self.manifest['split']!r} (one pack per split: data.root may hold "
                            "'{split}', e.g. /data/in1k_{split}.lmdb)")
        self.classes = list(self.manifest["classes"])
        self.num_classes = len(self.classes)
        self.channels = self.manifest["channels"]
        self.image_size = self.manifest.get("image_size")
        self._offsets = gap_offsets(self.manifest)
        self._size = min(self.manifest["count"], limit or self.manifest["count"])

    def __len__(self) -> int:
        return self._size

    def key(self, index: int) -> str:
        """The record key of item ``index``."""
        return record_key(self._offsets, index).decode()

    def describe(self, index: int) -> str:
        """Item ``index`` named in messages."""
        return f"{self.path} record {self.key(index)}"

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self._size:
            raise IndexError(f"index {index} out of range for {self._size} images")
        env, images = reader(self.path)
        with env.begin() as txn:
            record = txn.get(record_key(self._offsets, index), db=images)
        if record is None:
            raise BadImageError(f"record {self.key(index)} is missing (pack changed after opening)")
        label, name, data = parse_record(record)
        try:
            image = decode(data, self.channels)
        except BadImageError as exc:
            raise BadImageError(f"{name}: {exc}") from None
        return image.to(torch.float32).div_(255), label


def lmdb_dataset(config, split: str) -> Dataset:
    """The recipe's lmdb source: the pack of ``split``, bad records skipped or fatal per
    ``data.on_error``."""
    dataset = LmdbImages(pack_path(config.root, split), split=split, limit=config.limit)
    return SkipBad(dataset, dataset.describe, on_error=config.on_error)
