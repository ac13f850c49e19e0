"""iGPT-style colour palette: k-means cluster centres over pixel colours, and quantization to them.

Pixels are vectors ``(..., C)`` in ``[-1, 1]``; a palette is ``(K, C)`` centres sorted
lexicographically (first channel, then the rest) so a given fit always numbers colours the same
way. Palettes are stored as small JSON files (``save_palette`` / ``load_palette``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from arvision.errors import CheckpointError

__all__ = [
    "PALETTE_FORMAT",
    "PALETTE_VERSION",
    "fit_palette",
    "load_palette",
    "quantize",
    "sample_pixels",
    "save_palette",
]

PALETTE_FORMAT = "arvision-palette"
PALETTE_VERSION = 1
_CHUNK_ELEMENTS = 1 << 24  # distance-matrix entries computed at once (64 MiB of float32)
_PIXELS_PER_IMAGE = 64  # sample_pixels draws from about num_pixels // this many images


def _chunk_rows(num_centres: int) -> int:
    return max(1, _CHUNK_ELEMENTS // num_centres)


def _nearest(pixels: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centre id ``(N,)`` int64 and its distance ``(N,)`` for pixels ``(N, C)``."""
    ids = torch.empty(pixels.shape[0], dtype=torch.int64)
    dists = torch.empty(pixels.shape[0], dtype=centres.dtype)
    step = _chunk_rows(centres.shape[0])
    for start in range(0, pixels.shape[0], step):
        chunk = pixels[start : start + step]  # (n, C)
        d = torch.cdist(chunk, centres, compute_mode="use_mm_for_euclid_dist")  # (n, K)
        dists[start : start + step], ids[start : start + step] = d.min(dim=1)
    return ids, dists


def _sq_dist_to(pixels: Tensor, centre: Tensor) -> Tensor:
    """Squared distance ``(N,)`` from each pixel ``(N, C)`` to one centre ``(C,)``."""
    return (pixels - centre).square().sum(dim=1)


def _kmeans_plus_plus(pixels: Tensor, num_colors: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    n = pixels.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    min_sq = _sq_dist_to(pixels, pixels[chosen[0]]).double()  # (N,)
    for _ in range(1, num_colors):
        cumulative = torch.cumsum(min_sq, dim=0)  # (N,)
        total = float(cumulative[-1])
        if total > 0:
            target = torch.rand(1, generator=gen, dtype=torch.float64) * total
            pick = int(torch.searchsorted(cumulative, target, right=True).clamp(max=n - 1))
        else:  # fewer distinct colours than centres: duplicates are unavoidable
            pick = int(torch.randint(n, (1,), generator=gen))
        chosen.append(pick)
        min_sq = torch.minimum(min_sq, _sq_dist_to(pixels, pixels[pick]).double())
    return pixels[chosen].clone()  # (K, C)


def _sort_lexicographic(centres: Tensor) -> Tensor:
    """Sort rows by first column, ties by the second, and so on (stable sorts, last key first)."""
    for column in reversed(range(centres.shape[1])):
        centres = centres[torch.argsort(centres[:, column], stable=True)]
    return centres


def fit_palette(pixels: Tensor, num_colors: int, iterations: int = 20, seed: int = 0) -> Tensor:
    """k-means (k-means++ init, Lloyd steps) over pixels ``(N, C)``; returns centres ``(K, C)``.

    Empty clusters are re-seeded from the pixels farthest from their centres. The result is
    deterministic for a given ``seed`` and sorted by first channel, then the rest.
    """
    if pixels.ndim != 2:
        raise ValueError(f"fit_palette: pixels must be (N, C), got shape {tuple(pixels.shape)}")
    if isinstance(num_colors, bool) or not isinstance(num_colors, int) or num_colors < 1:
        raise ValueError(f"fit_palette: num_colors must be a positive int, got {num_colors!r}")
    if iterations < 0:
        raise ValueError(f"fit_palette: iterations must be >= 0, got {iterations!r}")
    n = pixels.shape[0]
    if n < num_colors:
        raise ValueError(f"fit_palette: need at least num_colors={num_colors} pixels, got {n}")
    pixels = pixels.detach().to(torch.float32).contiguous()  # (N, C)
    gen = torch.Generator().manual_seed(seed)
    centres = _kmeans_plus_plus(pixels, num_colors, gen)  # (K, C)
    previous: Tensor | None = None
    for _ in range(iterations):
        ids, dists = _nearest(pixels, centres)  # (N,), (N,)
        counts = torch.bincount(ids, minlength=num_colors)  # (K,)
        sums = torch.zeros_like(centres).index_add_(0, ids, pixels)  # (K, C)
        filled = counts > 0
        converged = previous is not None and bool(filled.all()) and torch.equal(ids, previous)
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(sums.dtype)
        empty = (~filled).nonzero().squeeze(1)  # (E,)
        if empty.numel():
            farthest = torch.topk(dists, empty.numel()).indices  # (E,)
            centres[empty] = pixels[farthest]
        if converged:
            break
        previous = ids
    return _sort_lexicographic(centres)


def quantize(pixels: Tensor, centres: Tensor) -> Tensor:
    """Nearest-centre ids: pixels ``(..., C)`` and centres ``(K, C)`` -> ``(...,)`` int64."""
    if centres.ndim != 2 or pixels.shape[-1:] != centres.shape[1:]:
        raise ValueError(
            f"quantize: pixels (..., C) and centres (K, C) disagree: {tuple(pixels.shape)} vs "
            f"{tuple(centres.shape)}"
        )
    flat = pixels.detach().reshape(-1, centres.shape[1]).to(centres.dtype)  # (N, C)
    ids, _ = _nearest(flat, centres.detach())
    return ids.reshape(pixels.shape[:-1])


def sample_pixels(dataset: Any, num_pixels: int, seed: int = 0) -> Tensor:
    """Random pixels ``(num_pixels, C)`` in ``[-1, 1]`` from a dataset of ``(image, label)``.

    Images ``(C, H, W)`` in ``[0, 1]`` are drawn without replacement, about one per
    ``_PIXELS_PER_IMAGE`` pixels requested (at least one, at most the whole dataset), and the
    pixels are spread evenly over them; only the drawn images are read.
    """
    if isinstance(num_pixels, bool) or not isinstance(num_pixels, int) or num_pixels < 1:
        raise ValueError(f"sample_pixels: num_pixels must be a positive int, got {num_pixels!r}")
    size = len(dataset)
    if size < 1:
        raise ValueError("sample_pixels: the dataset is empty")
    gen = torch.Generator().manual_seed(seed)
    num_images = max(1, min(size, num_pixels // _PIXELS_PER_IMAGE))
    picks = torch.randperm(size, generator=gen)[:num_images]  # (I,)
    per_image, extra = divmod(num_pixels, num_images)
    drawn = []
    for slot, index in enumerate(picks.tolist()):
        image, _ = dataset[index]
        if image.ndim != 3:
            raise ValueError(
                f"sample_pixels: item {index} image must be (C, H, W), got {tuple(image.shape)}"
            )
        flat = image.reshape(image.shape[0], -1).T  # (H*W, C)
        count = per_image + (1 if slot < extra else 0)
        where = torch.randint(flat.shape[0], (count,), generator=gen)  # (count,)
        drawn.append(flat[where])
    return torch.cat(drawn).to(torch.float32) * 2 - 1  # (num_pixels, C) in [-1, 1]


def save_palette(path: str | Path, centres: Tensor, meta: dict) -> None:
    """Write centres ``(K, C)`` and ``meta`` as a palette JSON file, atomically."""
    if centres.ndim != 2:
        raise ValueError(f"save_palette: centres must be (K, C), got {tuple(centres.shape)}")
    path = Path(path)
    document = {
        "format": PALETTE_FORMAT,
        "version": PALETTE_VERSION,
        "num_colors": centres.shape[0],
        "channels": centres.shape[1],
        "colors": centres.detach().to(torch.float64).tolist(),
        "meta": meta,
    }
    text = json.dumps(document, indent=1)  # fails before any file is touched
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_palette(path: str | Path) -> tuple[Tensor, dict]:
    """Read a palette file: centres ``(K, C)`` float32 and its ``meta`` dict.

    Raises CheckpointError (one line naming the file) when it is missing or malformed.
    """
    path = Path(path)

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"palette file {path}: {problem}")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad("is missing; expected a JSON file written by save_palette") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"cannot be read ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(
            f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(document, dict):
        raise bad(f"expected a JSON object, got {type(document).__name__}")
    if document.get("format") != PALETTE_FORMAT:
        raise bad(f"format is {document.get('format')!r}, expected {PALETTE_FORMAT!r}")
    if document.get("version") != PALETTE_VERSION:
        raise bad(f"version is {document.get('version')!r}, expected {PALETTE_VERSION}")
    num_colors, channels = document.get("num_colors"), document.get("channels")
    for name, value in (("num_colors", num_colors), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"{name} is {value!r}, expected a positive int")
    colors = document.get("colors")
    if not isinstance(colors, list) or not colors:
        raise bad("colors must be a non-empty list of [c1, ..., cC] lists")
    width = len(colors[0]) if isinstance(colors[0], list) else -1
    for row, color in enumerate(colors):
        if (
            not isinstance(color, list)
            or len(color) != width
            or not all(_is_number(v) and math.isfinite(v) and -1.0 <= v <= 1.0 for v in color)
        ):
            raise bad(
                f"colors[{row}] is not a list of {max(width, 1)} numbers in [-1, 1]; "
                "expected a K x C list of numbers in [-1, 1]"
            )
    if (len(colors), width) != (num_colors, channels):
        raise bad(
            f"colors is {len(colors)} x {width} but num_colors={num_colors} and channels={channels}"
        )
    meta = document.get("meta", {})
    if not isinstance(meta, dict):
        raise bad(f"meta is a {type(meta).__name__}, expected a JSON object")
    return torch.tensor(colors, dtype=torch.float32), meta
