"""Packing an image folder tree or Fashion-MNIST into an LMDB pack (layout: :mod:`.pack_format`).

Workers (a ``multiprocessing`` pool, results in source order) read, decode, resize and encode
images; the main process alone writes, committing every ``commit_every`` records. An interrupted
pack is resumed by running it again: the ``plan`` written first must match (same source, listing
and options), keys already present are skipped, and the manifest is written last. A larger
``limit`` (or none) extends a smaller pack the same way. A bad source image is skipped, named in a
warning line and listed in the manifest, or stops the pack with ``on_error="raise"``.
"""

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch

from ..errors import DataError
from .image_folder import read_image
from .images import encode, resize_short_side
from .pack_format import FORMAT, VERSION, content_hash, key, make_record, open_env
from .unreadable import BadImageError, warn

__all__ = ["Listing", "PackOptions", "list_source", "pack"]


@attrs.frozen
class PackOptions:
    """What ``arvision data pack`` was asked to do."""

    src: Path
    out: Path
    source: str = "imagefolder"  # or "fashion_mnist"
    split: str | None = None
    short_side: int = 256
    quality: int = 95
    image_format: str | None = None  # default: jpeg for imagefolder, png for fashion_mnist
    workers: int = attrs.field(factory=lambda: os.cpu_count() or 1)
    limit: int | None = None
    commit_every: int = 1000
    on_error: str = "skip"


@attrs.frozen
class Listing:
    """The source's images in pack order: ``items[i] = (name, label, path or raw pixels)``."""

    tree: Path
    split: str | None
    classes: tuple[str, ...]
    channels: int
    image_size: int | None  # fixed side of every packed image, when known in advance
    items: list[tuple[str, int, str | bytes]]


def _folder_listing(src: Path, split: str | None) -> Listing:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    tree = src / split if split and (src / split).is_dir() else src
    if not tree.is_dir():
        raise DataError(f"{src}: not a directory (expected an image folder tree <class>/<image>)")
    try:
        classes, class_to_idx = find_classes(str(tree))
    except FileNotFoundError as exc:
        raise DataError(f"{tree}: {str(exc).splitlines()[0]}") from None
    samples = make_dataset(str(tree), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"{tree}: no image files under its class folders ({', '.join(IMG_EXTENSIONS)})")
    items = [(os.path.relpath(path, tree), label, path) for path, label in samples]
    return Listing(tree.resolve(), split, tuple(classes), 3, None, items)


def _fashion_listing(src: Path, split: str | None, short_side: int) -> Listing:
    from .fashion_mnist import FashionMNIST

    if split is None:
        raise DataError("--split: required for --source fashion_mnist ('train' or 'test')")
    data = FashionMNIST(src, split=split)
    items = []
    for index in range(len(data)):
        image, label = data[index]  # float k / 255: back to the exact uint8 k
        raw = image.mul(255).round_().to(torch.uint8).numpy().tobytes()  # (28, 28) pixels
        items.append((f"{split}/{index:05d}", label, raw))
    side = min(data.image_size, short_side)
    return Listing(src.resolve(), split, tuple(data.classes), 1, side, items)


def list_source(options: PackOptions) -> Listing:
    """The images ``options`` would pack, in order (all of them: ``limit`` is applied later)."""
    if options.source == "imagefolder":
        return _folder_listing(options.src, options.split)
    if options.source == "fashion_mnist":
        return _fashion_listing(options.src, options.split, options.short_side)
    raise DataError(f"--source: {options.source!r} is unknown; expected 'imagefolder' or 'fashion_mnist'")


def _image_format(options: PackOptions) -> str:
    return options.image_format or ("png" if options.source == "fashion_mnist" else "jpeg")


def _plan(options: PackOptions, listing: Listing) -> dict[str, Any]:
    """What a resumed pack must agree on: source, listing and encoding options."""
    digest = hashlib.sha256()
    for name, label, _ in listing.items:
        digest.update(f"{name}\t{label}\n".encode())
    return {"format": FORMAT, "version": VERSION, "source": options.source, "src": str(listing.tree),
            "split": listing.split, "classes": list(listing.classes), "channels": listing.channels,
            "image_format": _image_format(options), "short_side": options.short_side,
            "quality": options.quality, "total": len(listing.items), "listing_sha256": digest.hexdigest()}


def _work(task: tuple[int, str, int, str | bytes], channels: int, short_side: int, image_format: str,
          quality: int) -> tuple[int, bytes | None, bytes | str]:
    """One image: ``(index, record, sha256)``, or ``(index, None, reason)`` when it is bad."""
    index, name, label, source = task
    try:
        if isinstance(source, bytes):  # Fashion-MNIST pixels, (side, side) uint8
            side = int(len(source) ** 0.5)
            image = torch.frombuffer(bytearray(source), dtype=torch.uint8).reshape(1, side, side)
        else:
            image = read_image(source, channels)
        data = encode(resize_short_side(image, short_side), image_format, quality)
    except BadImageError as exc:
        return index, None, str(exc)
    record = make_record(label, name, data)
    return index, record, hashlib.sha256(record).digest()


def _init_worker() -> None:
    torch.set_num_threads(1)  # one image per process; the pool is the parallelism


def _results(tasks: list, work: Callable, workers: int):
    if workers <= 1 or len(tasks) < 2:
        yield from map(work, tasks)
        return
    with multiprocessing.get_context().Pool(min(workers, len(tasks)), _init_worker) as pool:
        yield from pool.imap(work, tasks, chunksize=8)


def _start(env, images, plan: dict[str, Any], options: PackOptions, wanted: int) -> set[bytes] | None:
    """Check the plan, find the records present; None when the pack is already complete."""
    with env.begin(write=True) as txn:
        old = txn.get(b"plan")
        if old is not None and json.loads(old) != plan:
            differ = sorted(k for k, v in json.loads(old).items() if plan.get(k) != v)
            raise DataError(f"{options.out}: was started with other sources or options ({', '.join(differ)} "
                            "differ); run the same command again to finish it, or pack to a new path")
        manifest = txn.get(b"manifest")
        if manifest is not None and json.loads(manifest)["limit"] == options.limit:
            return None
        present = set(txn.cursor(db=images).iternext(keys=True, values=False))
        beyond = sum(1 for name in present if int(name) >= wanted)
        if beyond:
            raise DataError(f"{options.out}: holds {beyond} records beyond --limit {options.limit}; "
                            "pack to a new path")
        txn.put(b"plan", json.dumps(plan).encode())
        txn.delete(b"manifest")  # incomplete again until the new manifest
    return present


def pack(options: PackOptions, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pack ``options.src`` into ``options.out``; returns the manifest. ``progress(done, total)``
    is called after each committed batch (``done`` counts records already present too)."""
    listing = list_source(options)
    plan = _plan(options, listing)
    wanted = min(len(listing.items), options.limit or len(listing.items))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    env = open_env(options.out, write=True)
    try:
        images, digests = env.open_db(b"images"), env.open_db(b"sha256")
        present = _start(env, images, plan, options, wanted)
        if present is None:
            with env.begin() as txn:
                return json.loads(txn.get(b"manifest"))
        tasks = [(i, *listing.items[i]) for i in range(wanted) if key(i) not in present]
        work = partial(_work, channels=listing.channels, short_side=options.short_side,
                       image_format=plan["image_format"], quality=options.quality)
        skipped: list[dict[str, Any]] = []
        done, batch = wanted - len(tasks), []
        if progress:
            progress(done, wanted)
        for index, record, digest in _results(tasks, work, options.workers):
            if record is None:
                name = listing.items[index][0]
                if options.on_error == "raise":
                    raise BadImageError(f"{listing.tree / name}: {digest}")
                warn(f"skipped unreadable image {listing.tree / name}: {digest}")
                skipped.append({"index": index, "name": name, "error": digest})
            else:
                batch.append((key(index), record, digest))
            done += 1
            if len(batch) >= options.commit_every or done == wanted:
                _commit(env, images, digests, batch)
                batch = []
                if progress:
                    progress(done, wanted)
        return _finish(env, options, listing, plan, wanted, skipped)
    finally:
        env.close()


def _commit(env, images, digests, batch: list[tuple[bytes, bytes, bytes]]) -> None:
    with env.begin(write=True) as txn:
        for name, record, digest in batch:
            txn.put(name, record, db=images)
            txn.put(name, digest, db=digests)


def _finish(env, options: PackOptions, listing: Listing, plan: dict[str, Any], wanted: int,
            skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the manifest (last): counts, classes, options, content hash."""
    content, count = content_hash(env)
    bad = {item["index"] for item in skipped}
    per_class = Counter(listing.items[i][1] for i in range(wanted) if i not in bad)
    disk = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    manifest = {
        **{k: plan[k] for k in ("format", "version", "source", "src", "split", "image_format",
                                "short_side", "quality", "channels", "classes")},
        "count": count, "num_classes": len(listing.classes),
        "class_counts": [per_class.get(label, 0) for label in range(len(listing.classes))],
        "image_size": listing.image_size, "listed": len(listing.items), "limit": options.limit,
        "skipped": sorted(skipped, key=lambda item: item["index"]),
        "disk_bytes": disk, "bytes_per_image": round(disk / max(count, 1)),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "content_sha256": content,
    }
    if count + len(skipped) != wanted:
        raise DataError(f"{options.out}: {count} records + {len(skipped)} skipped != {wanted} planned")
    with env.begin(write=True) as txn:
        txn.put(b"manifest", json.dumps(manifest, indent=1).encode())
    return manifest
