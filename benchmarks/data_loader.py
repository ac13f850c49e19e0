"""Images/s the data pipeline delivers, and what a target cache saves in training.

    python benchmarks/data_loader.py [--images 256] [--out benchmarks/results/data_loader.json]

1. Loading: the same JPEGs (``--images`` photos-like images of 500x375, written once) read as an
   ImageFolder tree and as an LMDB pack (shorter side 256, quality 95), through the training
   loader (``build_batches``) with D-iGPT's augmentation at 224 (RandomResizedCrop 0.2..1,
   bicubic, flip), with 0, 1 and 2 workers.
2. Training: images/s of full training steps at a small geometry (ViT-Tiny student at 64 px,
   two transformer decoders) with a ViT-B/16 feature teacher at 128 px run online, against the
   same run reading the teacher's outputs from a target cache (one view per image); each the
   best of two alternating runs of 16 steps.
Both print a table and write JSON; numbers are ratios measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import attrs
import torch
from torchvision.io import encode_jpeg

from arvision.data.loader import build_batches, build_dataset
from arvision.data.pack import PackOptions, pack
from arvision.plugins import get_plugins
from arvision.pretrain import build_trainer, write_target_cache
from arvision.recipe import DataConfig, drop_none, structure_recipe

REPEATS = 2  # each training measurement is the best of this many
AUGMENT = {"crop_scale": (0.2, 1.0), "flip": True, "interpolation": "bicubic"}


def write_images(root: Path, count: int) -> None:
    """JPEGs with photo-like statistics: smooth gradients, texture and noise, 500x375."""
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 375), torch.linspace(0, 1, 500), indexing="ij")
    for index in range(count):
        folder = root / "train" / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = torch.rand(3, generator=generator) * 6.28
        base = torch.stack([0.5 + 0.4 * torch.sin(8 * xs * (c + 1) + 5 * ys + phase[c])
                            for c in range(3)])
        noise = 0.08 * torch.randn(3, 375, 500, generator=generator)
        pixels = ((base + noise).clamp(0, 1) * 255).to(torch.uint8)
        (folder / f"{index:05d}.jpg").write_bytes(bytes(encode_jpeg(pixels, quality=90).numpy()))


def loader_rate(config: DataConfig, workers: int, batches: int = 40, batch: int = 16) -> float:
    config = attrs.evolve(config, num_workers=workers)
    stream = build_batches(build_dataset(config), config, batch, 224, seed=0)
    for _ in range(2 * max(workers, 1)):  # start the workers and drain what they prefetched
        next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - started)


def loading_rows(root: Path) -> list[dict]:
    folder = DataConfig(source="imagefolder", root=str(root), **AUGMENT)
    pack(PackOptions(src=root, out=root / "pack.lmdb", split="train", workers=2))
    packed = DataConfig(source="lmdb", root=str(root / "pack.lmdb"), **AUGMENT)
    rows = []
    for name, config in (("imagefolder", folder), ("lmdb", packed)):
        for workers in (0, 1, 2):
            rows.append({"source": name, "workers": workers,
                         "images_per_s": loader_rate(config, workers)})
    return rows


def training_recipe(root: Path, targets: str | None) -> dict:
    return {
        "run": {"name": "bench"},
        "data": {"source": "lmdb", "root": str(root / "pack.lmdb"), **AUGMENT,
                 "crop_scale": list(AUGMENT["crop_scale"]), "targets": targets},
        "encoder": {"name": "vit_tiny_patch16_224", "img_size": 64, "patch_size": 8},
        "tokenizer": {"name": "timm", "model": "vit_base_patch16_224", "size": 128},
        "ordering": {"name": "random_segments"},
        "decoders": [{"name": "transformer", "predicts": role, "dim": 192, "depth": 2,
                      "num_heads": 6} for role in ("next", "visible")],
        "target": {"name": "cosine"},
        "train": {"batch_size": 16, "steps": 1000, "log_every": 1000},
    }


def training_rate(data: dict, steps: int = 16) -> float:
    recipe = structure_recipe(drop_none(data), "benchmark", get_plugins())
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(recipe, Path(out), "benchmark")
        trainer.train_step()  # warm up
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * recipe.train.batch_size / (time.perf_counter() - started)


def training_rows(root: Path) -> list[dict]:
    online = training_recipe(root, None)
    cache = root / "targets.lmdb"
    write_target_cache(structure_recipe(drop_none(online), "benchmark", get_plugins()), cache, views=1,
                       batch_size=32)
    cached = training_recipe(root, str(cache))
    rates = {"online": [], "cached": []}
    for _ in range(REPEATS):  # alternate, so a slow moment of the machine hits both alike
        rates["online"].append(training_rate(online))
        rates["cached"].append(training_rate(cached))
    return [{"teacher": name, "images_per_s": max(values), "runs": values}
            for name, values in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_loader.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, args.images)
        loading, training = loading_rows(root), training_rows(root)
    print("| source | workers | images/s |\n|---|---|---|")
    for row in loading:
        print(f"| {row['source']} | {row['workers']} | {row['images_per_s']:.0f} |")
    print("\n| teacher | training images/s |\n|---|---|")
    for row in training:
        print(f"| {row['teacher']} | {row['images_per_s']:.1f} |")
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "loading": loading, "training": training},
                                   indent=2))


if __name__ == "__main__":
    main()
