"""A file whose unpickling would run code is refused, by every command that reads a checkpoint.

The payload is a pickled ``os.system("touch MARKER")``, saved with ``torch.save`` or with
``pickle.dump``. Each command must exit 2 with one line that names the file and says it was not
loaded (naming the offending global), with neither torch's warning about the pickle protocol nor
its advice to re-run with ``weights_only=False``, and the marker must not exist.
"""

import os
import pickle
import shlex
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w
import torch

from arvision.checkpoint import UnreadableFile, read_weights_only
from arvision.errors import CheckpointError
from conftest import REPO, TINY, run_cli, tiny_data
from teachers import TINY_CLIP, TINY_VIT, register_clip_config


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_hostile(path: Path, marker: Path, writer: str) -> Path:
    """An arvision-looking checkpoint whose model is the payload."""
    content = {"format": "arvision-checkpoint", "model": Payload(marker), "step": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    if writer == "torch.save":
        torch.save(content, path)
    else:
        with path.open("wb") as file:
            pickle.dump(content, file)
    return path


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def finetune_recipe(tmp: Path, checkpoint: Path) -> dict:
    return {"finetune": {"checkpoint": str(checkpoint)}, "run": {"name": "tune"},
            "data": TINY["data"], "encoder": TINY["encoder"],
            "train": {"batch_size": 8, "steps": 1, "precision": "fp32"}}


def clip_run(tmp: Path, checkpoint: Path) -> list:
    """``arvision run`` with a CLIP teacher (the tiny open_clip config) reading ``checkpoint``."""
    register_clip_config(TINY_CLIP)
    recipe = tiny_data(
        encoder={"img_size": 32, "patch_size": 8},
        data={"synthetic": {"num_images": 16, "image_size": 32, "channels": 3, "num_classes": 2}},
        tokenizer={"name": "clip", "model": TINY_CLIP, "pretrained": str(checkpoint)},
        target={"name": "cosine"})
    return ["run", write_recipe(tmp / "clip.toml", recipe), "--out", tmp / "out"]


#: command -> (where the hostile file goes under tmp, argv given tmp and that file)
COMMANDS: dict[str, tuple[str, Callable[[Path, Path], list]]] = {
    "eval linear": ("ckpt.pt", lambda tmp, ckpt: ["eval", "linear", ckpt]),
    "eval knn": ("ckpt.pt", lambda tmp, ckpt: ["eval", "knn", ckpt]),
    "eval attentive": ("ckpt.pt", lambda tmp, ckpt: ["eval", "attentive", ckpt]),
    "eval finetune": ("ckpt.pt", lambda tmp, ckpt: ["eval", "finetune", ckpt]),
    "export": ("ckpt.pt", lambda tmp, ckpt: ["export", ckpt, tmp / "vit"]),
    "export --format state-dict": ("ckpt.pt", lambda tmp, ckpt: [
        "export", ckpt, tmp / "vit.pth", "--format", "state-dict"]),
    "convert digpt-official": ("checkpoint-299.pth", lambda tmp, ckpt: [
        "convert", "digpt-official", ckpt, tmp / "out.pt", "--recipe",
        write_recipe(tmp / "tiny.toml", TINY)]),
    "run finetune.checkpoint": ("ckpt.pt", lambda tmp, ckpt: [
        "run", write_recipe(tmp / "tune.toml", finetune_recipe(tmp, ckpt)), "--out", tmp / "tune"]),
    "run resume": ("run/checkpoints/step_00000001.pt", lambda tmp, ckpt: [
        "run", write_recipe(tmp / "tiny.toml", TINY), "--out", tmp / "run"]),
    "run timm teacher": ("teacher.pt", lambda tmp, ckpt: [
        "run", write_recipe(tmp / "teacher.toml", tiny_data(tokenizer={
            "name": "timm", **TINY_VIT, "checkpoint": str(ckpt)})),
        "--out", tmp / "out"]),
    "run clip teacher": ("clip.pt", lambda tmp, ckpt: clip_run(tmp, ckpt)),
    "run vqkd": ("vqkd.pth", lambda tmp, ckpt: [
        "run", write_recipe(tmp / "vqkd.toml", tiny_data(
            tokenizer={"name": "vqkd", "checkpoint": str(ckpt), "size": 16, "patch_size": 4,
                       "embed_dim": 32, "depth": 2, "num_heads": 2, "num_codes": 16, "code_dim": 8},
            target={"name": "ce"})), "--out", tmp / "out"]),
}


def assert_refused(code: int, err: str, path: Path, marker: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "not loaded" in lines[0] and "posix.system" in lines[0], err
    assert "weights_only" not in err and "Warning" not in err, err
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_refuses_a_file_that_would_run_code(command, writer, tmp_path, capsys):
    where, argv = COMMANDS[command]
    marker = tmp_path / "MARKER"
    path = write_hostile(tmp_path / where, marker, writer)
    with warnings.catch_warnings(record=True) as caught:  # pytest would keep them off stderr
        warnings.simplefilter("always")
        code, _out, err = run_cli(capsys, *argv(tmp_path, path))
    assert_refused(code, err, path, marker)
    noisy = [str(w.message) for w in caught if "pickle" in str(w.message) or "weights_only" in str(w.message)]
    assert not noisy, noisy


def test_refusal_is_one_line_on_the_real_stderr(tmp_path):
    """In a process of its own, where a warning would reach stderr."""
    marker = tmp_path / "MARKER"
    path = write_hostile(tmp_path / "ckpt.pt", marker, "pickle.dump")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-m", "arvision", "eval", "linear", str(path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert_refused(done.returncode, done.stderr, path, marker)


def test_a_record_read_from_memory_names_its_source(tmp_path):
    marker = tmp_path / "MARKER"
    raw = write_hostile(tmp_path / "record.pt", marker, "torch.save").read_bytes()
    with pytest.raises(CheckpointError, match=r"^cache\.lmdb: target record holds objects other "
                                              r"than tensors and plain containers \(posix\.system\)"):
        read_weights_only("cache.lmdb", "target record", data=raw)
    assert not marker.exists()


def test_admitted_classes_load_and_others_are_named(tmp_path):
    import argparse

    path = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.ones(2)}, path)
    assert read_weights_only(path, "checkpoint", allow=[argparse.Namespace])["args"].lr == 1.0
    with pytest.raises(CheckpointError, match=r"\(argparse\.Namespace\); not loaded, for safety"):
        read_weights_only(path, "checkpoint")


@pytest.mark.parametrize(("content", "reason"), [
    (b"not a checkpoint\n", "Unsupported operand"),
    (pickle.dumps({"plain": [1, 2]}, protocol=4), "Unsupported operand 149"),  # FRAME: not torch.save
], ids=["text", "plain-pickle"])
def test_foreign_files_are_unreadable_without_torch_advice(tmp_path, content, reason):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableFile) as info:
            read_weights_only(path, "checkpoint")
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable checkpoint (truncated, or not a PyTorch checkpoint: ")
    assert reason in info.value.reason and "weights_only" not in message and "\n" not in message
    assert not [w for w in caught if "pickle" in str(w.message)]


def test_truncated_torch_file_is_unreadable(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(64)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnreadableFile, match=r"cut\.pt: unreadable checkpoint .*zip archive"):
        read_weights_only(path, "checkpoint")
