"""A run's step checkpoints: where they lie, which to keep, and the RNG states they carry.

The files themselves are written and read by :mod:`arvision.checkpoint` (atomically, weights only).
"""

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["prune", "rank_part", "restore_rng_state", "rng_state", "saved_steps", "step_path"]

STEP_FILE = re.compile(r"step_\d{8}\.pt")


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in a form ``torch.load(weights_only=True)`` reads back."""
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_part(path: Path, rank: int) -> Path:
    """Where rank ``rank`` (> 0) keeps its own part of the checkpoint ``path``."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def saved_steps(directory: Path) -> list[Path]:
    """Checkpoints written by :func:`step_path`, oldest first (partial writes are not listed)."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("step_*.pt") if STEP_FILE.fullmatch(path.name))


def prune(directory: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (with the per-rank parts written beside them)."""
    for path in saved_steps(directory)[:-keep]:
        for part in directory.glob(f"{path.stem}.*"):
            part.unlink()
