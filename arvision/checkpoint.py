"""Checkpoint files: written aside and renamed into place, read without executing code."""

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["load_checkpoint", "prune", "rank_part", "restore_rng_state", "rng_state", "save_atomic",
           "save_checkpoint",
           "saved_steps", "step_path"]

FORMAT = "arvision-checkpoint"
STEP_FILE = re.compile(r"step_\d{8}\.pt")


def save_atomic(path: Path, data: Any) -> None:
    """``torch.save(data)`` to ``path`` atomically: written aside, synced, renamed into place, so
    a crash mid-write leaves the old file (or none) intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as file:
        torch.save(data, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, marked as an arvision checkpoint."""
    save_atomic(path, {"format": FORMAT, **state})


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no code runs)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a torch file: "
                              f"{reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an arvision checkpoint (no '{FORMAT}' marker)")
    return state


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG a run draws from, in a form ``torch.load(weights_only=True)`` reads back."""
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])
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
