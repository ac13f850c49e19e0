"""Run probes on a checkpoint and record the results in ``RUN_DIR/eval.json``.

``eval.json`` accumulates: each probe's latest result under its name, and those of the same
encoder at random initialisation under ``random_init``::

    {"linear": {"top1": 84.1, "top5": 99.5, "blocks": [3], "lr": 0.003, ...},
     "knn": {...}, "random_init": {"linear": {...}, "knn": {...}}}
"""

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..plugins import Plugins
from .attentive import attentive_probe
from .features import LoadedEncoder, Log, default_blocks, extract_features, load_encoder
from .probes import LINEAR_LRS, LINEAR_WEIGHT_DECAYS, knn_probe, linear_probe

__all__ = ["PROBES", "check_probes", "probe_encoder", "read_results", "run_probes", "write_results"]

PROBES = ("linear", "knn", "attentive")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_probes(checkpoint: str | Path, probes: Sequence[str] = ("linear", "knn"), *,
               random_init: bool = False, out_dir: str | Path | None = None,
               plugins: Plugins | None = None, **options: Any) -> dict[str, dict[str, Any]]:
    """Probe the frozen encoder of ``checkpoint``; returns ``{probe: result}`` and merges it into
    ``OUT_DIR/eval.json`` (default: the checkpoint's directory).

    ``random_init``: the same encoder at its recipe's seeded initialisation (a baseline).
    ``options``: those of :func:`probe_encoder`.
    """
    check_probes(probes)
    path = Path(checkpoint)
    run_dir = Path(out_dir) if out_dir is not None else path.parent
    results = probe_encoder(load_encoder(path, random_init, plugins), probes, run_dir, **options)
    write_results(run_dir / "eval.json", results, random_init)
    return results


def check_probes(probes: Sequence[str]) -> None:
    unknown = [probe for probe in probes if probe not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe {unknown[0]!r}; expected one of {', '.join(PROBES)}")


def probe_encoder(loaded: LoadedEncoder, probes: Sequence[str], run_dir: Path, *,
                  blocks: Sequence[int] | None = None, limit: int | None = None,
                  eval_limit: int | None = None, k: int = 20, temperature: float = 0.07,
                  knn_ks: Sequence[int] | None = None, linear_lrs: Sequence[float] = LINEAR_LRS,
                  linear_weight_decays: Sequence[float] = LINEAR_WEIGHT_DECAYS,
                  device: str = "auto", precision: str | None = None, batch_size: int = 256,
                  attentive_epochs: int = 10, attentive_lr: float = 1e-2,
                  attentive_lrs: Sequence[float] | None = None, heldout: float = 0.1,
                  seed: int = 0, cache: bool = True, log: Log | None = None,
                  attention: str | None = None) -> dict[str, dict[str, Any]]:
    """Probe a loaded frozen encoder; ``{probe: result}`` (features cached in RUN_DIR/features).

    ``blocks``: 1-based blocks whose features are averaged (default: the middle block).
    ``limit`` / ``eval_limit``: first N images of the train / eval split (default: all).
    ``knn_ks`` / ``attentive_lrs``: candidates chosen on a seeded ``heldout`` part of train (the
    linear probe always sweeps ``linear_lrs`` x ``linear_weight_decays`` so).
    ``precision``: autocast for extraction (default: the recipe's ``train.precision``).
    ``attention``: how the encoder attends, 'bidirectional', 'causal' or 'as_trained' (default:
    the recipe's ``eval.attention``).
    """
    check_probes(probes)
    blocks = tuple(blocks) if blocks else default_blocks(loaded.encoder.depth)
    data = loaded.recipe.data
    options = {"blocks": blocks, "cache_dir": run_dir / "features" if cache else None,
               "device": _device(device), "precision": precision or loaded.recipe.train.precision,
               "batch_size": batch_size, "with_tokens": "attentive" in probes, "log": log,
               "attention": attention}
    started = time.perf_counter()
    train = extract_features(loaded, data.split, limit=limit, **options)
    evals = extract_features(loaded, data.eval_split, limit=eval_limit, **options)
    common = {"blocks": list(blocks), "train_split": data.split, "eval_split": data.eval_split,
              "train_images": len(train.labels), "eval_images": len(evals.labels),
              "checkpoint": str(loaded.checkpoint), "step": loaded.step,
              "random_init": loaded.random_init,
              "attention": train.attention.mode, "attention_requested": train.attention.requested,
              "features_seconds": round(time.perf_counter() - started, 2)}
    results = {}
    for probe in probes:
        if log:
            log(f"{probe} probe on {len(train.labels)} train / {len(evals.labels)} eval images")
        tick = time.perf_counter()
        if probe == "linear":
            result = linear_probe(train.pooled, train.labels, evals.pooled, evals.labels,
                                  lrs=linear_lrs, weight_decays=linear_weight_decays,
                                  heldout=heldout, seed=seed)
        elif probe == "knn":
            result = knn_probe(train.pooled, train.labels, evals.pooled, evals.labels, k=k,
                               temperature=temperature, ks=knn_ks, heldout=heldout, seed=seed)
        else:
            heads = loaded.encoder.vit.blocks[0].attn.num_heads
            result = attentive_probe(train.fetch_tokens, train.labels, evals.fetch_tokens,
                                     evals.labels, num_heads=heads, epochs=attentive_epochs,
                                     lr=attentive_lr, batch_size=batch_size, seed=seed,
                                     lrs=attentive_lrs, heldout=heldout)
        results[probe] = {**result, **common,
                          "probe_seconds": round(time.perf_counter() - tick, 2)}
    return results


def read_results(path: Path) -> dict[str, Any]:
    """``eval.json`` as a dict (empty when missing or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_results(path: Path, results: dict[str, dict[str, Any]], random_init: bool) -> None:
    """Merge ``results`` into ``path`` (under ``random_init`` for the baseline), atomically."""
    data = read_results(path)
    section = data.setdefault("random_init", {}) if random_init else data
    section.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
