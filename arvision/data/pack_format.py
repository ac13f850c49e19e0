"""The LMDB pack layout shared by the packer, the reader and ``arvision data info``.

One LMDB environment (a directory ``OUT.lmdb/`` holding ``data.mdb``):

- sub-database ``images``: key = the source index as 9 ASCII digits (``b"000000042"``), value =
  a record: ``<q`` label, ``<H`` name length, the UTF-8 name (path relative to the source tree),
  then the encoded image (JPEG or PNG). Keys sort in source order. A bad source image leaves its
  key out (a gap), listed under ``skipped`` in the manifest.
- sub-database ``sha256``: the same keys, value = the 32-byte SHA-256 of the record, written in the
  same transaction, so hashing the content never has to re-read the images.
- main database: ``plan`` (JSON: source and options, written first, so a resumed pack refuses
  other options) and ``manifest`` (JSON, written last: a pack without one is incomplete).

``content_sha256`` in the manifest is SHA-256 over ``key + sha256(record)`` for every record in
key order.
"""

import bisect
import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import lmdb

from ..errors import DataError

__all__ = [
    "FORMAT", "MAP_SIZE", "VERSION", "content_hash", "gap_offsets", "key", "make_record", "open_env",
    "parse_record", "read_json", "reader", "record_key", "release", "validate", "verify",
]

FORMAT = "arvision-lmdb"
VERSION = 1
MAP_SIZE = 1 << 40  # virtual address space only; the file grows with the data
_HEADER = struct.Struct("<qH")


def key(index: int) -> bytes:
    """The record key of source index ``index``."""
    return b"%09d" % index


def make_record(label: int, name: str, image: bytes) -> bytes:
    encoded = name.encode()
    return _HEADER.pack(label, len(encoded)) + encoded + image


def parse_record(record: bytes) -> tuple[int, str, bytes]:
    """``(label, name, encoded image)`` of a record."""
    label, length = _HEADER.unpack_from(record)
    start = _HEADER.size
    return label, bytes(record[start:start + length]).decode(), bytes(record[start + length:])


def open_env(path: Path, write: bool = False) -> lmdb.Environment:
    """Open a pack for writing (closing this process's reader of it first), or read-only (prefer
    :func:`reader`, which shares one handle per process). The caller closes what this returns."""
    if write:
        release(path)
        return lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=2)
    if not (path / "data.mdb").is_file():
        what = "does not exist" if not path.exists() else "is not an LMDB pack (no data.mdb)"
        raise DataError(f"{path}: {what}; create one with 'arvision data pack SRC {path}'")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_dbs=2)


#: Readers by path: (pid that opened it, environment, ``images`` database or None).
_READERS: dict[str, tuple[int, lmdb.Environment, Any]] = {}


def reader(path: Path) -> tuple[lmdb.Environment, Any]:
    """This process's read-only handle on the pack at ``path`` (no locks, no readahead: random
    reads by many workers) and its ``images`` database, opened on first use.

    lmdb 3.0 refuses a second open of one path in a process, and a handle must not be used across
    ``fork``: a forked data-loader worker finds its parent's handle here, closes its copy (harmless
    with ``lock=False``) and opens its own.
    """
    path = path.resolve()
    entry = _READERS.get(str(path))
    if entry is not None and entry[0] == os.getpid():
        return entry[1], entry[2]
    release(path)
    env = open_env(path)
    try:  # a handle opened in its own transaction outlives it (one opened in a reader's does not)
        images = env.open_db(b"images", create=False)
    except lmdb.NotFoundError:
        images = None  # validate() names the problem
    _READERS[str(path)] = (os.getpid(), env, images)
    return env, images


def release(path: Path) -> None:
    """Close this process's reader of ``path``, if any (the next :func:`reader` reopens it)."""
    entry = _READERS.pop(str(path.resolve()), None)
    if entry is not None:
        with contextlib.suppress(lmdb.Error):
            entry[1].close()


def read_json(env: lmdb.Environment, name: bytes) -> dict[str, Any] | None:
    with env.begin() as txn:
        value = txn.get(name)
    return None if value is None else json.loads(value)


def record_key(offsets: list[int], index: int) -> bytes:
    """The key of the ``index``-th record, stepping over the gaps left by skipped source images
    (``offsets`` = sorted ``skipped index - rank``: see :func:`gap_offsets`)."""
    return key(index + bisect.bisect_right(offsets, index))


def gap_offsets(manifest: dict[str, Any]) -> list[int]:
    """For the j-th skipped source index s_j (sorted): the record index where the gap sits,
    s_j - j. The i-th record then has source index i + #{j: s_j - j <= i}."""
    skipped = sorted(item["index"] for item in manifest.get("skipped", ()))
    return [index - rank for rank, index in enumerate(skipped)]


def content_hash(env: lmdb.Environment) -> tuple[str, int]:
    """``content_sha256`` over the stored record digests, and the number of records."""
    total, count = hashlib.sha256(), 0
    with env.begin() as txn:
        digests = env.open_db(b"sha256", txn=txn, create=False)
        for name, digest in txn.cursor(db=digests):
            total.update(name)
            total.update(digest)
            count += 1
    return total.hexdigest(), count


def _databases(env: lmdb.Environment, txn: lmdb.Transaction, path: Path):
    try:
        return env.open_db(b"images", txn=txn, create=False), env.open_db(b"sha256", txn=txn,
                                                                           create=False)
    except lmdb.NotFoundError:
        raise DataError(f"{path}: not an arvision pack (no 'images' database)") from None


def validate(env: lmdb.Environment, path: Path) -> dict[str, Any]:
    """The manifest, after a cheap check that it matches the content: format, record counts, and
    the first and last records' keys and digests. Raises a one-line DataError otherwise."""
    manifest = read_json(env, b"manifest")
    if manifest is None:
        raise DataError(f"{path}: incomplete pack (no manifest); finish it by running the same "
                        "'arvision data pack' command again")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{path}: manifest format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    count = manifest["count"]
    if count == 0:
        raise DataError(f"{path}: empty pack (0 images)")
    offsets = gap_offsets(manifest)
    with env.begin() as txn:
        images, digests = _databases(env, txn, path)
        stored = txn.stat(images)["entries"], txn.stat(digests)["entries"]
        if stored != (count, count):
            raise DataError(f"{path}: manifest says {count} images but the pack holds {stored[0]} "
                            f"records and {stored[1]} digests; re-pack it")
        first, last = record_key(offsets, 0), record_key(offsets, count - 1)
        cursor = txn.cursor(db=images)
        found = (cursor.key() if cursor.first() else None, cursor.key() if cursor.last() else None)
        if found != (first, last):
            span = " to ".join(k.decode() if k else "none" for k in found)
            raise DataError(f"{path}: record keys run {span}, the manifest says {first.decode()} to "
                            f"{last.decode()}; re-pack it")
        for name in (first, last):
            if hashlib.sha256(txn.get(name, db=images)).digest() != txn.get(name, db=digests):
                raise DataError(f"{path}: record {name.decode()} does not match its digest; re-pack it")
    return manifest


def verify(env: lmdb.Environment, path: Path) -> int:
    """Full check: re-hash every record against its digest and the manifest's content hash.
    Returns the number of records checked; raises a one-line DataError on the first mismatch."""
    manifest = validate(env, path)
    with env.begin() as txn:
        images, digests = _databases(env, txn, path)
        for name, record in txn.cursor(db=images):
            if hashlib.sha256(record).digest() != txn.get(name, db=digests):
                raise DataError(f"{path}: record {name.decode()} does not match its digest")
    found, count = content_hash(env)
    if found != manifest["content_sha256"]:
        raise DataError(f"{path}: content hash {found[:12]}... does not match the manifest's "
                        f"{manifest['content_sha256'][:12]}...")
    return count
