"""Checkpoint files: written aside and renamed into place, read without executing code."""

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError, listed

__all__ = [
    "UnreadableFile",
    "key_mismatches",
    "load_checkpoint",
    "read_weights_only",
    "refuse_unsafe_file",
    "require_pretraining",
    "save_atomic",
    "save_checkpoint",
]

FORMAT = "arvision-checkpoint"
#: Lines of torch's weights_only errors that are advice (re-run with weights_only=False, ...),
#: not the reason: such advice must not reach a user holding a file that would run code.
_ADVICE = re.compile(r"weights.only|Check the documentation|Please file an issue", re.IGNORECASE)
_TORCH_GLOBAL = re.compile(r"GLOBAL (\S+)")
#: pickle opcodes that push a string (the module and name of a STACK_GLOBAL)
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
            "BINUNICODE8"}


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


class UnreadableFile(CheckpointError):
    """A file torch cannot read (truncated, or not a torch file); ``reason``: why, in torch's words
    less its advice (for callers that word the error their own way)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_weights_only(path: str | Path, what: str, *, data: bytes | None = None,
                      map_location: str | torch.device = "cpu", allow: Iterable[type] = ()) -> Any:
    """``torch.load(weights_only=True)`` of the file ``path`` (or of ``data``, a record read from
    it): tensors and plain containers only, so no code in the file runs. Every ``torch.load`` of
    arvision and its built-in plugins goes through here.

    ``allow``: classes admitted besides (e.g. ``argparse.Namespace`` in training scripts' files).
    A missing file, a file holding other objects (named, e.g. ``posix.system``: refused without
    running them) and a truncated or foreign file (:class:`UnreadableFile`) are one-line
    CheckpointErrors naming ``path`` and ``what`` it should have been.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    allow = list(allow)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allow):
            # A pickle protocol above 2 only means the file was not written by torch.save.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path if data is None else io.BytesIO(data), map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as exc:
        error: Exception = exc
        unsafe = _unsafe_globals(path, data, allow) or _TORCH_GLOBAL.findall(str(exc))
    except Exception as exc:
        error, unsafe = exc, []
    if unsafe:
        raise _unsafe_error(path, what, unsafe) from None
    reason = _reason(error)
    raise UnreadableFile(f"{path}: unreadable {what} (truncated, or not a PyTorch checkpoint: "
                         f"{reason})", reason) from None


def refuse_unsafe_file(path: str | Path, what: str) -> None:
    """Raise what :func:`read_weights_only` would for a file that would run code, reading only its
    pickle's opcodes (not its tensors): for files another library loads (open_clip)."""
    path = Path(path)
    unsafe = _unsafe_globals(path, None, [])
    if unsafe:
        raise _unsafe_error(path, what, unsafe)


def _unsafe_error(path: Path, what: str, unsafe: list[str]) -> CheckpointError:
    return CheckpointError(f"{path}: {what} holds objects other than tensors and plain containers "
                           f"({', '.join(unsafe)}); not loaded, for safety")


def _reason(exc: Exception) -> str:
    """The first line of torch's error that says what is wrong, leaving out its advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not _ADVICE.search(line)]
    return reasons[0].split(". ")[0][:200] if reasons else type(exc).__name__


def _unsafe_globals(path: Path, data: bytes | None, allow: list[type]) -> list[str]:
    """The classes and functions the file's pickle names that weights-only loading refuses, read
    from its opcodes without running them ([] where the file cannot be parsed)."""
    # torch's own allow-list, read as torch.serialization.get_unsafe_globals_in_checkpoint does
    allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    allowed |= {f"{obj.__module__}.{obj.__qualname__}" for obj in allow}
    try:
        with io.BytesIO(data) if data is not None else path.open("rb") as file:
            if not zipfile.is_zipfile(file):
                file.seek(0)
                found = list(_pickled_globals(file))
            else:
                with zipfile.ZipFile(file) as archive:
                    name = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
                    with archive.open(name) as pickled:
                        found = list(_pickled_globals(pickled))
    except (OSError, EOFError, StopIteration, zipfile.BadZipFile):
        return []
    return [name for name in dict.fromkeys(found) if name not in allowed]


def _pickled_globals(file: IO[bytes]) -> Iterator[str]:
    """``module.name`` of each global a pickle stream loads (GLOBAL, INST, STACK_GLOBAL), up to
    its end or to the first byte that is not an opcode."""
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(file):
            if opcode.name in ("GLOBAL", "INST"):
                yield str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                yield ".".join(strings[-2:])
            elif opcode.name in _STRINGS:
                strings.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
    except ValueError:  # truncated, or not a pickle: what was found so far
        return


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights only: no code runs)."""
    state = read_weights_only(path, "checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an arvision checkpoint (no '{FORMAT}' marker)")
    return state


def key_mismatches(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """What keeps the state dict ``found`` from loading strictly where ``expected`` (tensors or
    shapes by key) is wanted: ``missing keys ...``, ``unexpected keys ...``, ``shape mismatch
    KEY ([found] vs [expected])``, a few of each; [] when it fits."""
    def shape(value: Any) -> list[int]:
        return list(getattr(value, "shape", value))

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{key} ({shape(found[key])} vs {shape(expected[key])})"
              for key in sorted(set(found) & set(expected)) if shape(found[key]) != shape(expected[key])]
    return [f"{label} {listed(keys)}" for label, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if keys]


def require_pretraining(path: str | Path, state: dict[str, Any], purpose: str) -> None:
    """A one-line CheckpointError unless ``state`` is a pretraining checkpoint with its recipe:
    names the kind it is instead (a fine-tuning or VQ-KD run), before its recipe is read."""
    kind = state.get("kind", "pretrain")
    if kind != "pretrain":
        raise CheckpointError(f"{path}: not a pretraining checkpoint but a {kind} run's; "
                              f"{purpose} reads the encoder of an `arvision run` pretraining")
    if not isinstance(state.get("recipe"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: not a pretraining checkpoint (no recipe and model weights: "
                              "not written by `arvision run`)")
