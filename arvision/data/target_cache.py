"""The target cache, as training reads it: a tokenizer's outputs for K fixed augmented views of
every image, in LMDB (written by :func:`arvision.pretrain.write_target_cache`).

D-iGPT spends much of its compute on the ViT-H teacher. ``arvision data cache-targets`` runs the
recipe's tokenizer once over K views per image (drawn like training views, from
``(cache seed, view, index)``) and stores each view's crop box and its tokens: ids as int32,
features and CLS as float16. A run with ``data.targets = "OUT.lmdb"`` then picks one of the K
views per sample (a function of ``(seed, epoch, index)``, so resume stays exact), renders that crop
and reads its tokens: no teacher runs. The manifest's fingerprint (tokenizer table, student size,
view settings, data identity) must match the recipe, or the cache is refused.
"""

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import lmdb
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..checkpoint import read_weights_only
from ..errors import DataError
from ..recipe import Recipe, recipe_to_dict
from ..seeds import sample_seed
from .views import View, ViewAugment

__all__ = ["CacheWriter", "CachedViews", "TargetCache", "fingerprint"]

MANIFEST = b"__manifest__"
MAP_SIZE = 1 << 40  # a sparse upper bound; LMDB grows the file as records arrive


def fingerprint(recipe: Recipe, image_size: int) -> dict[str, Any]:
    """Everything the cached tokens depend on."""
    data = recipe_to_dict(recipe)
    keep = ("source", "root", "split", "limit", "crop_scale", "flip", "interpolation", "synthetic")
    return {"tokenizer": data["tokenizer"], "image_size": image_size,
            "data": {key: data["data"].get(key) for key in keep}}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _key(index: int, view: int) -> bytes:
    return f"{index:010d}/{view:04d}".encode()


def _pack(view: View, tokens: Tensor, cls: Tensor | None) -> bytes:
    buffer = io.BytesIO()
    torch.save({"view": view.as_tensor(), "tokens": tokens, "cls": cls}, buffer)
    return buffer.getvalue()


def _stored(tokens: Tensor) -> Tensor:
    return tokens.to(torch.int32) if not tokens.is_floating_point() else tokens.to(torch.float16)


class CacheWriter:
    """Writes a cache: one record per (image, view), then the manifest, which marks it finished."""

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(str(path), map_size=MAP_SIZE, subdir=True)

    def put(self, records: list[tuple[int, int, View, Tensor, Tensor | None]]) -> None:
        """``(index, view, crop, tokens, cls)`` records, in one transaction."""
        with self.env.begin(write=True) as txn:
            for index, view, crop, tokens, cls in records:
                cls = None if cls is None else _stored(cls)
                txn.put(_key(index, view), _pack(crop, _stored(tokens), cls))

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (with the hash of its fingerprint) and close; returns it."""
        manifest = {"format": "arvision-target-cache", "version": 1, **manifest,
                    "hash": _digest(manifest["fingerprint"])}
        with self.env.begin(write=True) as txn:
            txn.put(MANIFEST, json.dumps(manifest).encode())
        self.env.close()
        return manifest


class TargetCache:
    """Read access to a cache, opened lazily once per process (LMDB refuses a second open)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._env, self._pid = None, None
        self.manifest = self._read_manifest()

    def _open(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False,
                                  subdir=True)
            self._pid = os.getpid()
        return self._env

    def _read_manifest(self) -> dict[str, Any]:
        if not (self.path / "data.mdb").is_file():
            raise DataError(f"data.targets: {self.path} is not a target cache (no data.mdb); "
                            "write one with 'arvision data cache-targets'")
        env = lmdb.open(str(self.path), readonly=True, lock=False, subdir=True)
        try:
            with env.begin() as txn:
                raw = txn.get(MANIFEST)
        finally:
            env.close()
        if raw is None:
            raise DataError(f"data.targets: {self.path} has no manifest: the cache was not finished")
        return json.loads(raw)

    def check(self, recipe: Recipe, image_size: int) -> None:
        """Refuse a cache made by another tokenizer, student size, view setting or data set."""
        expected = fingerprint(recipe, image_size)
        if _digest(expected) == self.manifest["hash"]:
            return
        saved = self.manifest["fingerprint"]
        differing = [key for key in sorted(set(expected) | set(saved))
                     if expected.get(key) != saved.get(key)]
        raise DataError(f"data.targets: {self.path} was made with other settings "
                        f"({', '.join(differing)} differ from the recipe); write a new cache")

    def views_of(self, index: int, view: int) -> tuple[View, Tensor, Tensor | None]:
        with self._open().begin() as txn:
            raw = txn.get(_key(index, view))
        if raw is None:
            raise DataError(f"data.targets: {self.path} has no view {view} of image {index}")
        record = read_weights_only(self.path, f"target record (image {index}, view {view})", data=raw)
        return View.from_tensor(record["view"]), record["tokens"], record["cls"]

    def __getstate__(self) -> dict[str, Any]:  # workers open their own environment
        return {**self.__dict__, "_env": None, "_pid": None}


class CachedViews(Dataset):
    """Training items from a cache: one of K cached views per ``(epoch, index)``, with its tokens:
    ``(image, label, seed, tokens, cls)`` (``seed``: the key's, as :class:`Augmented` gives)."""

    def __init__(self, dataset: Dataset, augment: ViewAugment, cache: TargetCache, seed: int) -> None:
        self.dataset, self.augment, self.cache, self.seed = dataset, augment, cache, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        crop, tokens, cls = self.cache.views_of(index, seed % self.cache.manifest["views"])
        image, label = self.dataset[index]
        empty = torch.zeros(0, dtype=torch.float16)
        return self.augment.render(image, crop), label, seed, tokens, empty if cls is None else cls

