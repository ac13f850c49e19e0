"""How the D-iGPT training step's cost grows with the work, and how closely the peak memory that
``arvision check`` estimates follows the measured one.

    python benchmarks/scaling.py [--precision fp32|bf16] [--device cpu|cuda] [--batches 8 32 128]
                                 [--out benchmarks/results/scaling.json]

From a base point (train_step.py's D-iGPT geometry: ViT-Tiny encoder, batch 8, 2x2 segments,
the teacher's tokens read from a target cache) one factor changes at a time:

    batch       32, 128 (``--batches``)
    encoder     ViT-Small, ViT-Base (the released depth 12, so the same tapped blocks)
    segments    7x7 (49 segments of 2x2 patches instead of 4 of 7x7; 4x4 does not divide 14x14),
                with the teacher at 196 px so that its grid (14x14) divides too
    teacher     online: a ViT-H/14 (timm ``vit_huge_patch14_224``, random weights: only its cost
                counts) runs in every step, beside the same teacher's tokens from a cache

Each point is one configuration of train_step.py (eager, the engine's step) in a fresh
subprocess: images/s, the median step and the measured peak (CUDA allocator peak, or peak RSS
minus the RSS before the model was built). On the CPU each point also runs one step under the
profiler for the allocated peak: the bytes PyTorch's allocator held at the step's peak (the
weights, buffers and AdamW moments plus the step's own peak over them), which leaves out what
glibc keeps after a free and so what the RSS adds as the batch grows. The estimate is
:func:`arvision.memory.estimate_memory` of the same recipe at that batch: the fp32 weights,
gradients and AdamW moments, plus what autograd saves for backward, counted on fake tensors. It
leaves out the tokenizer, so an online teacher's
weights and forward show up as the measured excess of that row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from measure import machine_info
from train_step import Config, Geometry, recipe_data, run_isolated

from arvision.build import resolve
from arvision.memory import estimate_memory
from arvision.plugins import get_plugins
from arvision.recipe import structure_recipe

__all__ = ["Point", "estimated_peak", "format_table", "main", "measure_point", "points"]

ENCODERS = {"Tiny": "vit_tiny_patch16_224", "Small": "vit_small_patch16_224",
            "Base": "vit_base_patch16_224"}
TEACHER = "vit_huge_patch14_224"  # the ViT-H/14 trunk of D-iGPT's CLIP teacher, in timm
TEACHER_PATCH = 14  # its patch size (the base point's CLIP ViT-H-14 too)


@dataclass(frozen=True)
class Point:
    """One row: what changed from the base point, the model and the batch."""

    factor: str  # "base", "batch", "encoder", "segments", "teacher"
    geometry: Geometry
    batch: int

    @property
    def encoder(self) -> str:
        return next((k for k, v in ENCODERS.items() if v == self.geometry.encoder),
                    self.geometry.encoder)

    @property
    def targets(self) -> str:
        g = self.geometry
        teacher = "CLIP ViT-H/14" if g.teacher_source == "clip" else g.teacher
        return f"{teacher} {'online' if g.teacher_online else 'cache'}"


def points(base: Geometry = Geometry(), batches: tuple[int, ...] = (8, 32, 128)) -> list[Point]:
    """The base point, then each factor changed alone (see the module docstring)."""
    first, *more = batches
    grid = base.img_size // base.patch_size  # the student's tokens per side
    timm_teacher = replace(base, teacher=TEACHER, teacher_source="timm")
    return [
        Point("base", base, first),
        *(Point("batch", base, batch) for batch in more),
        *(Point("encoder", replace(base, encoder=ENCODERS[name]), first)
          for name in ("Small", "Base")),
        # segments must divide the student's grid and the teacher's: half the student's grid
        # (7x7 of 14x14), the teacher resized to the same grid (196 px: 14x14 tokens)
        Point("segments", replace(base, segments=grid // 2,
                                  teacher_size=grid * TEACHER_PATCH), first),
        Point("teacher", timm_teacher, first),
        Point("teacher", replace(timm_teacher, teacher_online=True), first),
    ]


def estimated_peak(geometry: Geometry, batch: int, precision: str, device: str) -> int:
    """``arvision check``'s estimate for this geometry at ``batch`` (bytes)."""
    train = {"batch_size": batch, "precision": precision, "device": device}
    recipe = structure_recipe({**recipe_data(geometry), "train": train}, "benchmarks/scaling.py",
                              get_plugins())
    return estimate_memory(resolve(recipe, "benchmarks/scaling.py")).peak(batch)


#: Each measured peak -> its ratio to the estimate, in a row.
RATIOS = {"peak_memory_bytes": "measured_over_estimated",
          "allocated_peak_bytes": "allocated_over_estimated"}


def measure_point(point: Point, precision: str, device: str, steps: int, warmup: int,
                  threads: int, timeout: float) -> dict[str, Any]:
    """The point's train_step row, with the estimate and measured / estimated."""
    spec = {"config": asdict(Config(precision, "eager", point.batch)),
            "geometry": asdict(point.geometry), "steps": steps, "warmup": warmup,
            "device": device, "flops": None, "threads": threads, "matmul_n": 1024,
            "allocated": device == "cpu"}
    row = run_isolated(spec, compile_budget=timeout, timeout=timeout)
    row.update(factor=point.factor, encoder=point.encoder, segments=point.geometry.segments,
               targets=point.targets,
               estimated_peak_bytes=estimated_peak(point.geometry, point.batch, precision, device))
    for measured, ratio in RATIOS.items():
        if row["status"] == "ok" and row.get(measured):
            row[ratio] = row[measured] / row["estimated_peak_bytes"]
    return row


COLUMNS = ("factor", "encoder", "batch", "segments", "targets", "images/s", "step ms",
           "measured peak", "allocated peak", "estimated peak", "measured / estimated",
           "allocated / estimated")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (the one docs/performance.md holds)."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i in (0, 1, 4) else "---:" for i in range(len(COLUMNS))) + "|"]
    for r in rows:
        head = [r["factor"], r["encoder"], str(r["batch"]), f"{r['segments']}x{r['segments']}",
                r["targets"]]
        if r["status"] != "ok":
            error = r.get("error", "").strip().splitlines()
            cells = [f"{r['status']}: {error[0][:80] if error else ''}", *[""] * 6]
        else:
            ratios = [r.get(ratio) for ratio in RATIOS.values()]
            cells = [f"{r['images_per_s']:.2f}", f"{r['step_ms']:.0f}",
                     _gib(r.get("peak_memory_bytes")), _gib(r.get("allocated_peak_bytes")),
                     _gib(r["estimated_peak_bytes"]),
                     *("-" if ratio is None else f"{ratio:.2f}" for ratio in ratios)]
        lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128],
                        help="the base point's batch first, then the larger ones")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per point")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    began = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(torch.device(args.device)),
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix(),
                                               *(argv if argv is not None else sys.argv[1:])]),
              "precision": args.precision, "complete": False, "rows": []}
    for point in points(batches=tuple(args.batches)):
        row = measure_point(point, args.precision, args.device, args.steps, args.warmup,
                            torch.get_num_threads(), args.timeout)
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("times_s", "warmup_s")}),
              flush=True)
        result["total_s"] = time.perf_counter() - began
        out.write_text(json.dumps(result, indent=2) + "\n")  # a killed run keeps its rows
    result["complete"] = True
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result["rows"]))
    print(f"wrote {out} ({result['total_s']:.0f} s)")
    return result["rows"]


if __name__ == "__main__":
    main()
