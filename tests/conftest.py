"""Shared fixtures: offline hub, tiny recipes on synthetic data, fresh plugin sets."""

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray download fails in seconds instead of hanging

from arvision.plugins import load_plugins
from arvision.recipe import Recipe, structure_recipe

REPO = Path(__file__).resolve().parents[1]

#: A tiny pixel recipe on synthetic 16x16 RGB images: 4x4 patches, 2-block ViT.
TINY: dict[str, Any] = {
    "run": {"name": "tiny"},
    "data": {"source": "synthetic", "synthetic": {"num_images": 64, "image_size": 16,
                                                  "channels": 3, "num_classes": 4}},
    "encoder": {"name": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4,
                "embed_dim": 32, "depth": 2, "num_heads": 2},
    "tokenizer": {"name": "pixels"},
    "ordering": {"name": "raster"},
    "decoders": [{"name": "linear", "predicts": "next"}],
    "target": {"name": "mse"},
    "train": {"batch_size": 8, "steps": 4, "base_lr": 1e-3, "precision": "fp32", "log_every": 2},
}


def tiny_data(**sections: dict[str, Any]) -> dict[str, Any]:
    """The tiny recipe as a dict with ``sections`` merged over it (one level deep)."""
    data = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def tiny_recipe(**sections: dict[str, Any]) -> Recipe:
    return structure_recipe(tiny_data(**sections), "tiny.toml", load_plugins())


FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def require_fashion_mnist() -> None:
    """Skip without the Fashion-MNIST files, but fail under CI, whose script installs them."""
    if not FMNIST.exists():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST is missing: .ci/run must apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped without CUDA: CI runs the whole suite on the CPU."""
    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(needs_cuda)


@pytest.fixture
def plugins():
    return load_plugins()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``arvision ARGV`` in this process: (exit code, stdout, stderr)."""
    from arvision.cli import main

    try:
        main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny pretraining, its export and that export in a Hub cache (teachers.exported_run)."""
    from teachers import EXPORT_NORMALIZATION, exported_run

    return exported_run(tmp_path_factory.mktemp("exported"), **EXPORT_NORMALIZATION)


@pytest.fixture
def hub(exported, monkeypatch):
    """huggingface_hub reads the test's cache (offline)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(exported["cache"]))
    assert huggingface_hub.constants.HF_HUB_OFFLINE
