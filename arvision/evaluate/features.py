"""Frozen features of a checkpoint's encoder, extracted once per (weights, blocks, split, limit).

    checkpoint --recipe--> model (state loaded strictly) --> encoder (eval, no grad)
    images (plain resize, no crop, no flip) --Encoder.features(blocks, mask of eval.attention)-->
        block outputs                      (no mask: bidirectional; else block-causal, .attention)
    tokens  = mean over blocks of LayerNorm(output)[:, patch tokens]    (N, T, D)
    pooled  = tokens averaged over the T patch tokens (CLS excluded)     (N, D)

The LayerNorm is a fresh one without weights (``F.layer_norm``), as iGPT and AIM probe raw block
outputs. ``pooled`` is cached as a ``.pt`` under ``RUN_DIR/features/``; the token tensors (for
the attentive probe) are cached beside it when they fit in ``max_token_bytes``, else streamed.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..build import Blueprint, build_model, resolve
from ..checkpoint import load_checkpoint, read_weights_only, require_pretraining, save_atomic
from ..components import Tokenizer
from ..data.loader import Transformed, worker_count
from ..data.sources import build_dataset
from ..data.views import View, ViewAugment
from ..errors import CheckpointError, RecipeError
from ..model import Encoder
from ..plugins import Plugins, get_plugins
from ..precision import autocast, resolve_precision
from ..recipe import EvalConfig, Recipe, structure_recipe
from .attention import ProbeAttention, probe_attention

__all__ = ["Extractor", "Features", "LoadedEncoder", "default_blocks", "extract_features",
           "load_encoder", "probe_dataset", "resolve_attention"]

CACHE_VERSION = 1  # bump when what a cache file holds changes
Log = Callable[[str], None]


def default_blocks(depth: int) -> tuple[int, ...]:
    """The middle block: iGPT found generative models' best linear-probe features mid-network (the
    last blocks specialise in predicting the next token)."""
    return (max(1, depth // 2),)


@attrs.frozen
class LoadedEncoder:
    """A checkpoint's frozen encoder, and what identifies its weights."""

    encoder: Encoder
    tokenizer: Tokenizer | None  # only for stem 'tokens': the encoder reads the tokenizer's ids
    blueprint: Blueprint
    checkpoint: Path
    step: int | None
    fingerprint: str  # changes when the weights change
    random_init: bool

    @property
    def recipe(self) -> Recipe:
        return self.blueprint.recipe


def _mismatch(expected: dict[str, Tensor], found: dict[str, Any]) -> str:
    """One line on how a state dict differs from the model's (missing, unexpected, shapes)."""
    def some(keys: list[str]) -> str:
        return keys[0] + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{key} is {tuple(found[key].shape)} in the checkpoint, {tuple(value.shape)} by the "
              f"recipe" for key, value in expected.items()
              if key in found and tuple(found[key].shape) != tuple(value.shape)]
    parts = ([f"missing {some(missing)}"] if missing else []) + \
        ([f"unexpected {some(unexpected)}"] if unexpected else []) + \
        ([some(shapes)] if shapes else [])
    return "; ".join(parts)


def load_encoder(checkpoint: str | Path, random_init: bool = False,
                 plugins: Plugins | None = None) -> LoadedEncoder:
    """Rebuild the model from the checkpoint's recipe and load its weights strictly.

    ``random_init``: the same encoder at the initialisation its recipe's seed gives, no weights
    loaded (a baseline). Weights that do not fit the recipe are a one-line CheckpointError.
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    require_pretraining(path, state, "probing")
    recipe = structure_recipe(state["recipe"], str(path), plugins or get_plugins())
    blueprint = resolve(recipe, str(path))
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(recipe.train.seed)
        model = build_model(blueprint, with_tokenizer=recipe.encoder.stem == "tokens")
    if random_init:
        recipe_text = json.dumps(state["recipe"], sort_keys=True, default=str)
        fingerprint = f"random-init:{recipe_text}"
    else:
        problem = _mismatch(model.state_dict(), state["model"])
        if problem:
            raise CheckpointError(f"{path}: the weights do not match the checkpoint's recipe "
                                  f"({problem})")
        model.load_state_dict(state["model"], strict=True)
        stat = path.stat()
        fingerprint = f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
    encoder = model.encoder.eval().requires_grad_(False)
    return LoadedEncoder(encoder, model.tokenizer, blueprint, path, state.get("step"),
                         fingerprint, random_init)


def probe_dataset(recipe: Recipe, split: str, limit: int | None, size: int) -> Dataset:
    """The recipe's data source, ``split``, first ``limit`` images, plain resize (no crop/flip).

    ``data.limit`` (a pretraining subset) does not apply: probes use the whole split by default.
    """
    data = attrs.evolve(recipe.data, limit=limit, crop_scale=None, flip=False)
    augment = ViewAugment(data, size)  # the training resize, without crop or flip

    def resize(image: Tensor) -> Tensor:  # (C, H, W) -> (C, size, size) float in [0, 1]
        return augment.render(image, View(0, 0, image.shape[-2], image.shape[-1], flip=False))

    return Transformed(build_dataset(data, split), resize)


def resolve_attention(loaded: LoadedEncoder, attention: str | None = None) -> ProbeAttention:
    """``attention`` (default: the checkpoint recipe's ``eval.attention``) for this encoder."""
    recipe = loaded.recipe
    requested = attention or (recipe.eval or EvalConfig()).attention
    try:
        return probe_attention(requested, loaded.blueprint.ordering,
                               recipe.ordering.prefix_attention)
    except ValueError as exc:
        raise RecipeError(f"--attention: {exc}") from None


class Extractor:
    """Frozen encoder -> token features (B, T, D): the layer-normed, block-averaged patch tokens,
    the encoder attending as ``attention`` says (default: bidirectionally)."""

    def __init__(self, loaded: LoadedEncoder, blocks: Sequence[int], device: torch.device,
                 precision: str, attention: ProbeAttention | None = None) -> None:
        depth = loaded.encoder.depth
        if not blocks or any(not 1 <= block <= depth for block in blocks):
            raise RecipeError(f"--blocks: expected block numbers in 1..{depth}, got {list(blocks)}")
        self.encoder = loaded.encoder.to(device)
        self.tokenizer = loaded.tokenizer.to(device) if loaded.tokenizer is not None else None
        self.blocks, self.device = tuple(blocks), device
        self.precision = precision
        self.attention = attention
        self.mask = attention.mask(loaded.encoder.grid, loaded.encoder.num_prefix > 0, device) \
            if attention is not None else None  # (1, 1, P+N, P+N) or None

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        images = images.to(self.device)  # (B, C, H, W) in [0, 1]
        ids = self.tokenizer(images).tokens if self.tokenizer is not None else None  # (B, h, w)
        with autocast(self.device, self.precision):
            outputs = self.encoder.features(images, self.blocks, ids, self.mask)  # (B, P + T, D)
        prefix = self.encoder.num_prefix
        normed = [F.layer_norm(out[:, prefix:].float(), out.shape[-1:]) for out in outputs]
        return torch.stack(normed).mean(0)  # (B, T, D)


@attrs.frozen
class Features:
    """One split's features: ``pooled`` (N, D) float32, ``labels`` (N,), and the token features,
    either cached (``tokens`` (N, T, D) bf16) or recomputed on demand (``stream``); ``attention``
    says how the encoder attended."""

    pooled: Tensor
    labels: Tensor
    tokens: Tensor | None = None
    stream: Callable[[Tensor], Tensor] | None = None
    attention: ProbeAttention | None = None

    def fetch_tokens(self, index: Tensor) -> Tensor:
        """Token features (b, T, D) float32 of the images at ``index`` (b,)."""
        if self.tokens is not None:
            return self.tokens[index].float()
        if self.stream is None:
            raise ValueError("these features were extracted without token features")
        return self.stream(index)


def _streamer(dataset: Dataset, extract: Extractor) -> Callable[[Tensor], Tensor]:
    def stream(index: Tensor) -> Tensor:
        images = torch.stack([dataset[int(i)][0] for i in index])  # (b, C, H, W)
        return extract(images).cpu()  # (b, T, D)
    return stream


def extract_features(loaded: LoadedEncoder, split: str, blocks: Sequence[int], limit: int | None,
                     cache_dir: Path | None, device: torch.device, precision: str = "auto",
                     batch_size: int = 256, with_tokens: bool = False,
                     max_token_bytes: int = 2 << 30, log: Log | None = None,
                     attention: str | None = None) -> Features:
    """Features of ``split``, read from ``cache_dir`` when an earlier extraction left them there.

    ``attention``: 'bidirectional', 'causal' or 'as_trained' (default: the recipe's
    ``eval.attention``; see :mod:`.attention`)."""
    size = loaded.blueprint.image.size
    how = resolve_attention(loaded, attention)
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type != "cuda":
        precision = "fp32"
    key = hashlib.sha256(json.dumps([CACHE_VERSION, loaded.fingerprint, list(blocks), split, limit,
                                     size, precision, how.key]).encode()).hexdigest()[:16]
    pooled_path = cache_dir / f"{split}-{key}.pt" if cache_dir else None
    tokens_path = cache_dir / f"{split}-{key}-tokens.pt" if cache_dir else None
    dataset = probe_dataset(loaded.recipe, split, limit, size)
    extract = Extractor(loaded, blocks, device, precision, how)
    grid, dim = loaded.encoder.grid, loaded.encoder.dim
    token_bytes = len(dataset) * grid[0] * grid[1] * dim * 2  # bf16
    keep_tokens = with_tokens and token_bytes <= max_token_bytes
    have_pooled = pooled_path is not None and pooled_path.is_file()
    have_tokens = tokens_path is not None and tokens_path.is_file()
    if have_pooled and (have_tokens or not keep_tokens):
        cached = read_weights_only(pooled_path, "feature cache")
        tokens = read_weights_only(tokens_path, "feature cache")["tokens"] if keep_tokens else None
        stream = _streamer(dataset, extract) if with_tokens and not keep_tokens else None
        return Features(cached["pooled"], cached["labels"], tokens, stream, how)
    if log:
        log(f"extracting {split} features of {len(dataset)} images (blocks {list(blocks)}, "
            f"{how.mode} attention)")
    pooled, labels, tokens = _run(dataset, extract, batch_size, loaded.recipe.data.num_workers,
                                  keep_tokens)
    if pooled_path is not None and not have_pooled:
        save_atomic(pooled_path, {"pooled": pooled, "labels": labels, "blocks": list(blocks),
                            "split": split, "fingerprint": loaded.fingerprint,
                            "attention": how.key})
    if tokens_path is not None and keep_tokens:
        save_atomic(tokens_path, {"tokens": tokens})
    stream = _streamer(dataset, extract) if with_tokens and not keep_tokens else None
    return Features(pooled, labels, tokens, stream, how)


def _run(dataset: Dataset, extract: Extractor, batch_size: int, workers: int, keep_tokens: bool
         ) -> tuple[Tensor, Tensor, Tensor | None]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=worker_count(workers))
    pooled, labels, tokens = [], [], []
    for images, targets in loader:
        feats = extract(images).cpu()  # (b, T, D)
        pooled.append(feats.mean(1))  # (b, D)
        labels.append(torch.as_tensor(targets, dtype=torch.long))
        if keep_tokens:
            tokens.append(feats.to(torch.bfloat16))
    return (torch.cat(pooled), torch.cat(labels), torch.cat(tokens) if keep_tokens else None)
