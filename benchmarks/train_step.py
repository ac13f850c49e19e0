"""Throughput, peak memory and achieved FLOP/s of one D-iGPT training step.

    python benchmarks/train_step.py [--quick] [--device cpu|cuda] [--out benchmarks/results/train_step.json]

The model is the CLIP D-iGPT recipe (ViT-Tiny student by default) built from a recipe dict: 224 px,
patch 16 (14x14), 2x2 random segments, a ``next`` and a ``visible`` transformer decoder (1024 wide,
2 deep, 32 heads), cosine target on OpenCLIP ViT-H/14 features (16x16x1024 + CLS). The teacher never
runs: each step reads precomputed random teacher tokens, so only the student is measured.

One step is the engine's (:meth:`arvision.engine.Trainer.train_step`, what ``arvision run``
executes): forward (fp32, or under bf16 autocast), backward, gradient-norm guard, AdamW step (fused
on CUDA), schedule; each sample's segment order is drawn from its seed inside the step, as in
training. Modes: ``eager``; ``recompute``: eager with ``train.recompute`` of both kinds (the
MLPs' activations and the attention weights recomputed in backward); ``checkpoint``: eager
with ``train.activation_checkpointing`` (encoder and decoder blocks recomputed); ``compile``:
the engine's ``train.compile = "model"``, the whole forward compiled in place;
``compile-blocks``: ``train.compile = "blocks"``, ``compile()`` on every transformer block of
the encoder and the decoders; ``reference``: the released D-iGPT model
restated in eager PyTorch (benchmarks/digpt_reference.py) at the same geometry, its own step
(benchmarks/reference_step.py), so arvision's overhead shows beside it (its FLOPs are counted on
the arvision model, the same computation); ``reference-reuse``: the same, with the C allocator
set as arvision's engine sets it on the CPU (``train.cpu_allocator = "reuse"``,
:mod:`arvision.engine.cpu_memory`), which the released code as it runs does not; both
comparisons are printed side by side. Each configuration runs in a fresh
subprocess (with its own, cold inductor cache): a compile failure or a crash becomes that row's
error, CPU peak RSS is per configuration, and a compile still running after ``--compile-budget``
seconds is stopped and its row marked skipped. The first compiled step is timed and reported as
the compile time; it is not part of the timed steps. Step time is the median of the timed steps.

Peak memory: ``torch.cuda.max_memory_allocated`` over the timed steps on CUDA; on the CPU the peak
RSS of the timed steps (the kernel's VmHWM, reset just before them) minus the RSS before the model
was built, i.e. weights, gradients, optimiser state, activations and allocator caching. The JSON
also holds ``rss_growth_timed_bytes``, the peak over the RSS at the start of the timed steps, and
``page_faults_per_step``: the process's minor page faults over the timed steps, per step.

FLOPs per step are counted once per batch size with ``FlopCounterMode`` on the meta device
(forward + backward; the optimiser's elementwise work is not counted) and divided by the step time.
The reference is a 2048^3 matmul in the row's dtype, timed the same way right before and right
after the timed steps (the mean of the two), so both see the same machine load; in a fresh process
with the same thread count (:func:`measure.matmul_tflops_apart`), since in this one it would change
how glibc serves the step's allocations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from measure import (
    PHASE,
    ROW,
    PeakMemory,
    cpu_seconds,
    machine_info,
    matmul_tflops,
    matmul_tflops_apart,
    time_steps,
)
from measure import (
    run_isolated as run_script,
)
from torch.utils.flop_counter import FlopCounterMode

from arvision.build import Blueprint, build_model, resolve
from arvision.components import Tokens
from arvision.engine import Trainer, assemble_trainer, start_run
from arvision.engine.cpu_memory import reuse_freed_memory
from arvision.memory import allocator_peak
from arvision.model.attention import choose_backend
from arvision.plugins import get_plugins
from arvision.pretrain import pretrain_inputs
from arvision.recipe import structure_recipe
from reference_step import make_reference_step

__all__ = [
    "Config", "FixedBatches", "Geometry", "combine_rounds", "count_flops", "format_comparison",
    "format_table", "machine_info", "main", "make_blueprint", "make_step", "matmul_tflops",
    "recipe_data", "run_config", "run_isolated", "time_steps",
]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODES = ("eager", "recompute", "checkpoint", "compile", "compile-blocks", "reference",
         "reference-reuse")
#: the released model's step: as it runs, and with arvision's CPU allocator setting
REFERENCE_MODES = ("reference", "reference-reuse")
#: mode -> the engine's train.compile
COMPILE_KEY = {"compile": "model", "compile-blocks": "blocks"}
#: Eager modes that trade time for memory: their ``[train]`` settings.
MEMORY_MODES = {"recompute": {"recompute": ["mlp_activation", "attention_weights"]},
                "checkpoint": {"activation_checkpointing": True}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Geometry:
    """The model measured; the defaults are D-iGPT's (ViT-Tiny student)."""

    img_size: int = 224
    patch_size: int = 16
    encoder: str = "vit_tiny_patch16_224"
    embed_dim: int | None = None  # None: the timm model's
    depth: int | None = None
    num_heads: int | None = None
    teacher: str = "ViT-H-14"  # open_clip name: only its token_spec is used (no weights)
    teacher_size: int | None = None  # None: the teacher's 224 -> 16x16 tokens
    teacher_source: str = "clip"  # or "timm": ``teacher`` names a timm ViT (random weights)
    teacher_online: bool = False  # the teacher runs in every step (timm only) instead of tokens
    # read from a target cache
    segments: int = 2  # rows = cols
    decoder_dim: int = 1024
    decoder_depth: int = 2
    decoder_heads: int = 32


@dataclass(frozen=True)
class Config:
    precision: str = "fp32"  # or "bf16" (autocast)
    mode: str = "eager"  # "recompute": train.recompute of both kinds; "checkpoint":
    # train.activation_checkpointing; "compile": the whole model; "compile-blocks": each block;
    # "reference": the released D-iGPT model restated (benchmarks/reference_step.py);
    # "reference-reuse": the same with arvision's CPU allocator setting
    batch: int = 8
    attention: str = "auto"  # train.attention_backend: "auto" (flex on CUDA), "sdpa", "flex"


def recipe_data(geometry: Geometry) -> dict[str, Any]:
    """The D-iGPT recipe for ``geometry`` as a dict (what a TOML file would hold)."""
    g = geometry
    overrides = {"embed_dim": g.embed_dim, "depth": g.depth, "num_heads": g.num_heads}
    encoder = {"name": g.encoder, "img_size": g.img_size, "patch_size": g.patch_size,
               "pos_embed": "sincos", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
               **{key: value for key, value in overrides.items() if value is not None}}
    tokenizer = {"name": g.teacher_source, "model": g.teacher}
    if g.teacher_size is not None:
        tokenizer["size"] = g.teacher_size

    def decoder(predicts: str, key: str) -> dict[str, Any]:
        return {"name": "transformer", "predicts": predicts, "key": key, "dim": g.decoder_dim,
                "depth": g.decoder_depth, "num_heads": g.decoder_heads,
                "memory_norm_eps": 1e-5}  # as released: the reference mode converts exactly

    return {
        "run": {"name": "bench_train_step"},
        "data": {"source": "synthetic", "synthetic": {"image_size": g.img_size, "channels": 3}},
        "encoder": encoder,
        "tokenizer": tokenizer,
        "ordering": {"name": "random_segments", "rows": g.segments, "cols": g.segments},
        "decoders": [decoder("next", "generative"), decoder("visible", "discriminative")],
        "target": {"name": "cosine"},
    }


def make_blueprint(geometry: Geometry) -> Blueprint:
    return resolve(structure_recipe(recipe_data(geometry), "benchmarks/train_step.py",
                                    get_plugins()))


def make_inputs(blueprint: Blueprint, batch: int, device: torch.device | str
                ) -> tuple[torch.Tensor, Tokens]:
    """Random images in [0, 1] and random teacher tokens (B, h, w, D) + CLS (B, D)."""
    image, spec = blueprint.image, blueprint.tokens
    images = torch.rand(batch, image.channels, image.size, image.size, device=device)
    tokens = torch.randn(batch, *spec.grid, spec.dim, device=device)
    cls = torch.randn(batch, spec.dim, device=device) if spec.cls else None
    return images, Tokens(tokens, cls)


def count_flops(geometry: Geometry, batch: int) -> int:
    """FLOPs of forward + backward at ``batch``, counted on the meta device (nothing allocated)."""
    blueprint = make_blueprint(geometry)
    order = blueprint.ordering.plan(batch).order  # drawn on the CPU, moved to meta below
    with torch.device("meta"):
        model = build_model(blueprint, with_tokenizer=False)
        images, tokens = make_inputs(blueprint, batch, "meta")
        with FlopCounterMode(display=False) as counter:
            model(images, tokens=tokens, order=order.to("meta")).loss.backward()
    return counter.get_total_flops()


class FixedBatches:
    """The same batch at every step, where the engine reads a data loader's batches."""

    def __init__(self, batch: tuple[Any, ...]) -> None:
        self.batch = batch

    def __next__(self) -> tuple[Any, ...]:
        return self.batch

    def __len__(self) -> int:  # batches per epoch, for the schedule
        return 1_000_000

    def state_dict(self) -> dict[str, Any]:
        return {}


def make_step(config: Config, geometry: Geometry, device: torch.device):
    """The engine's training step (:meth:`arvision.engine.Trainer.train_step`) on the D-iGPT model
    with a fixed batch of random images and teacher tokens; each call is one optimiser step.

    As in training, every sample's segment order is drawn from its own seed inside the step.
    """
    blueprint = make_blueprint(geometry)
    if config.mode in REFERENCE_MODES:
        if config.mode == "reference-reuse" and device.type == "cpu":
            reuse_freed_memory()
        return make_released_step(config, blueprint, device)
    train = {"batch_size": config.batch, "precision": config.precision, "device": str(device),
             "base_lr": 1e-4, "compile": COMPILE_KEY.get(config.mode, "none"),
             "attention_backend": config.attention, **MEMORY_MODES.get(config.mode, {})}
    recipe = structure_recipe({**recipe_data(geometry), "train": train}, "benchmarks/train_step.py",
                              get_plugins())
    start = start_run(recipe, "benchmarks/train_step.py")  # seeds every RNG with train.seed
    online = geometry.teacher_online
    model = build_model(blueprint, with_tokenizer=online).to(device).train()
    model.attention = choose_backend(config.attention, device)
    model.recompute_in_backward(recipe.train.recompute, recipe.train.activation_checkpointing)
    images, tokens = make_inputs(blueprint, config.batch, device)
    seeds = torch.arange(config.batch)
    batch = (images, torch.zeros(config.batch), seeds)  # the teacher computes the targets
    if not online:  # a target cache's batch
        batch += (tokens.tokens, tokens.cls if tokens.cls is not None else torch.zeros(0))
    out = Path(tempfile.gettempdir())  # unused: only fit() writes checkpoints
    trainer = assemble_trainer(start, out, model, FixedBatches(batch), pretrain_inputs,
                               ema_source=model.encoder, shard_units=model.encoder.vit.blocks)
    return trainer.train_step


def make_released_step(config: Config, blueprint: Blueprint, device: torch.device):
    """The ``reference`` mode: the released model's step at the blueprint's geometry, seeded and
    fed like :func:`make_step`."""
    torch.manual_seed(0)
    images, tokens = make_inputs(blueprint, config.batch, device)
    _model, step = make_reference_step(blueprint, images, tokens.tokens, tokens.cls,
                                       DTYPES[config.precision] if config.precision != "fp32"
                                       else None)
    return step


def allocated_peak(trainer: Trainer) -> int:
    """The most bytes PyTorch's CPU allocator held during one training step of ``trainer``: the
    tensors alive before it (weights, buffers, AdamW moments) plus the step's own peak over
    them (activations, gradients, transients; :func:`arvision.memory.allocator_peak`). The peak
    RSS also holds what the C allocator keeps after a free."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*trainer.model.parameters(), *trainer.model.buffers())}
    for state in trainer.optimizer.state.values():
        storages.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                         for t in state.values() if isinstance(t, torch.Tensor)})
    return sum(storages.values()) + allocator_peak(trainer.train_step)


def run_config(config: Config, geometry: Geometry = Geometry(), steps: int = 5, warmup: int = 2,
               device: str = "cpu", flops: int | None = None, report=None, matmul_n: int = 2048,
               allocated: bool = False) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` (+1 to compile); a failure is the row's error.

    A ``matmul_n``-cubed matmul in the row's dtype is timed right before and after the timed steps
    (in a fresh process, under the same load) as the reference for ``fraction_of_matmul``.
    ``report(phase)`` is told "compile" before the first compiled step and "timed" after it.
    With ``allocated`` (arvision's steps on the CPU), one more step runs under the profiler for
    ``allocated_peak_bytes`` (:func:`allocated_peak`).
    """
    row: dict[str, Any] = {**asdict(config), "status": "ok", "steps": steps, "warmup": warmup}
    dev, compiling = torch.device(device), config.mode in COMPILE_KEY
    memory = PeakMemory(dev)
    try:
        step = make_step(config, geometry, dev)
        if compiling and report:
            report("compile")
        row["warmup_s"] = time_steps(step, compiling + warmup, dev)
        if compiling:
            row["compile_s"] = row["warmup_s"][0]  # tracing and compiling, then the step itself
            if report:
                report("timed")
        matmul = [matmul_tflops_apart(dev, DTYPES[config.precision], matmul_n)]
        memory.start()
        cpu, faults = cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = time_steps(step, steps, dev)
        cpu = cpu_seconds() - cpu
        row["page_faults_per_step"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                                       - faults) / steps
        row.update(memory.stop())
        matmul.append(matmul_tflops_apart(dev, DTYPES[config.precision], matmul_n))
        if allocated and dev.type == "cpu" and config.mode not in REFERENCE_MODES:
            row["allocated_peak_bytes"] = allocated_peak(step.__self__)
    except Exception as exc:  # the row records it; the other configurations still run
        row.update(status="failed", error=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
        return row
    step_s = statistics.median(times)
    flops = count_flops(geometry, config.batch) if flops is None else flops
    row.update(step_ms=1e3 * step_s, step_ms_min=1e3 * min(times),
               step_ms_mean=1e3 * statistics.mean(times), times_s=times,
               images_per_s=config.batch / step_s, flops_per_step=flops,
               achieved_tflops=flops / step_s / 1e12, matmul_tflops_before_after=matmul,
               matmul_tflops=statistics.mean(matmul),
               load_average=os.getloadavg()[0])  # other processes share the CPU: read with care
    row["fraction_of_matmul"] = row["achieved_tflops"] / row["matmul_tflops"]
    if dev.type == "cpu":  # CPU time / (wall time x threads): below 1 when others took the cores
        row["cpu_share"] = cpu / (sum(times) * torch.get_num_threads())
    return row


# -- the driver: one subprocess per configuration ----------------------------------------------------


def _worker(spec: dict[str, Any]) -> None:
    """Run one configuration (``--worker JSON``) and print its row."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])

    def report(phase: str) -> None:
        print(PHASE + phase, flush=True)

    row = run_config(Config(**spec["config"]), Geometry(**spec["geometry"]), spec["steps"],
                     spec["warmup"], spec["device"], spec["flops"], report, spec.get("matmul_n", 2048),
                     spec.get("allocated", False))
    print(ROW + json.dumps(row), flush=True)


def run_isolated(spec: dict[str, Any], compile_budget: float, timeout: float) -> dict[str, Any]:
    """One configuration of this benchmark in a fresh Python (:func:`measure.run_isolated`)."""
    return run_script(__file__, spec, compile_budget, timeout)


def _short(error: str, width: int = 100) -> str:
    line = error.strip().splitlines()[0] if error.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _fmt_bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


COLUMNS = ("precision", "mode", "batch", "images/s", "step ms", "peak memory", "achieved TFLOP/s",
           "fraction of matmul", "compile s", "CPU share")


def _cells(r: dict[str, Any]) -> list[str]:
    """A row's cells under COLUMNS; a failed or skipped row shows its status and error instead."""
    head = [r["precision"], r["mode"], str(r["batch"])]
    if r["status"] != "ok":
        return [*head, f"{r['status']}: {_short(r.get('error', ''))}", *[""] * (len(COLUMNS) - 4)]
    share = r.get("cpu_share")
    return [*head, f"{r['images_per_s']:.2f}", f"{r['step_ms']:.0f}",
            _fmt_bytes(r.get("peak_memory_bytes")), f"{r['achieved_tflops']:.3f}",
            f"{r['fraction_of_matmul']:.2f}", f"{r['compile_s']:.0f}" if "compile_s" in r else "",
            "" if share is None else f"{share:.2f}"]


def combine_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration from its runs in every round: images/s, step time, peak
    memory and page faults are the medians over the rounds that ran; the per-round images/s
    stay in ``images_per_s_rounds`` (:func:`format_comparison` takes ratios per round from
    them). A configuration that failed in every round keeps its first failure."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["precision"], run["batch"], run["mode"]), []).append(run)
    rows = []
    for group in groups.values():
        ok = [run for run in group if run["status"] == "ok"]
        if not ok:
            rows.append(group[0])
            continue
        row = dict(ok[len(ok) // 2])
        for key in ("images_per_s", "step_ms", "peak_memory_bytes", "page_faults_per_step",
                    "achieved_tflops", "fraction_of_matmul"):
            row[key] = statistics.median(run[key] for run in ok)
        row["rounds"] = len(ok)
        row["images_per_s_rounds"] = {run["round"]: run["images_per_s"] for run in ok}
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (the one docs/performance.md holds)."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """arvision's eager steps (plain and the memory modes) against each reference mode
    measured, per precision and batch: a Markdown table of images/s, peak memory and their
    ratios (arvision / released). Over several rounds the images/s ratio is the median of the
    rounds' ratios (each round runs both sides minutes apart), beside their range."""
    lines = ["| precision | batch | arvision step | released step | arvision images/s | "
             "released images/s | ratio | ratio per round | arvision peak | released peak | "
             "memory ratio | page faults / step |",
             "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    ok = {(r["precision"], r["batch"], r["mode"]): r for r in rows if r["status"] == "ok"}
    for (precision, batch, mode), ours in ok.items():
        if mode != "eager" and mode not in MEMORY_MODES:
            continue
        for reference in REFERENCE_MODES:
            theirs = ok.get((precision, batch, reference))
            if theirs is None:
                continue
            rounds = _round_ratios(ours, theirs)
            ratio = (statistics.median(rounds) if rounds
                     else ours["images_per_s"] / theirs["images_per_s"])
            spread = f"{min(rounds):.2f}-{max(rounds):.2f}" if len(rounds) > 1 else ""
            lines.append(
                f"| {precision} | {batch} | {mode} | {reference} | {ours['images_per_s']:.2f} | "
                f"{theirs['images_per_s']:.2f} | {ratio:.2f} | {spread} | "
                f"{_fmt_bytes(ours['peak_memory_bytes'])} | "
                f"{_fmt_bytes(theirs['peak_memory_bytes'])} | "
                f"{ours['peak_memory_bytes'] / theirs['peak_memory_bytes']:.2f} | "
                f"{ours['page_faults_per_step']:.0f} / {theirs['page_faults_per_step']:.0f} |")
    return "\n".join(lines)


def _round_ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> list[float]:
    """The images/s ratio (ours / theirs) of every round both ran."""
    mine, other = ours.get("images_per_s_rounds", {}), theirs.get("images_per_s_rounds", {})
    return [mine[r] / other[r] for r in sorted(mine.keys() & other.keys())]


def _print_table(rows: list[dict[str, Any]], matmul: dict[str, float]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(format_table(rows))
        return
    table = Table(title="D-iGPT training step (matmul TFLOP/s at start: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in matmul.items()) + ")")
    for index, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if index < 2 else "right")
    for r in rows:
        cells = _cells(r)
        if r["status"] != "ok":
            cells[3] = f"[red]{r['status']}[/red]"
        table.add_row(*cells)
    console = Console(width=max(Console().width, 150))
    console.print(table)
    for r in rows:
        if r["status"] != "ok":
            console.print(f"{r['precision']} {r['mode']} batch {r['batch']}: {r['status']}: "
                          f"{_short(r.get('error', ''), 300)}", markup=False)


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 only, fewer steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 8 32; quick 8)")
    parser.add_argument("--precisions", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    parser.add_argument("--modes", nargs="+", choices=MODES,
                        help="default: all; quick: eager and compile")
    parser.add_argument("--steps", type=int, help="timed steps (default 5; quick 2)")
    parser.add_argument("--rounds", type=_count, default=1,
                        help="times every configuration runs, the configurations alternating; "
                        "the table shows medians over the rounds")
    parser.add_argument("--warmup", type=int, help="warm-up steps, after compile (default 2; quick 1)")
    parser.add_argument("--attention", choices=("auto", "sdpa", "flex"), default="auto",
                        help="train.attention_backend (auto: flex on CUDA, else sdpa)")
    parser.add_argument("--compile-budget", type=float, default=300.0,
                        help="seconds a compile may take before its row is skipped")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return []
    device = torch.device(args.device)
    batches = args.batches or ([8] if args.quick else [8, 32])
    modes = args.modes or (["eager", "compile"] if args.quick else list(MODES))
    steps = args.steps or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    geometry = Geometry()
    began = time.perf_counter()
    matmul = {"fp32": matmul_tflops(device, torch.float32),
              "bf16": matmul_tflops(device, torch.bfloat16)}
    print("matmul 2048^3 TFLOP/s: " + ", ".join(f"{k} {v:.3f}" for k, v in matmul.items()), flush=True)
    flops = {batch: count_flops(geometry, batch) for batch in batches}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(device), "geometry": asdict(geometry),
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
              "quick": args.quick, "matmul_tflops": matmul, "flops_per_step": flops,
              "complete": False, "rows": []}
    runs = result["rows"]  # every configuration of every round
    for round_index in range(args.rounds):
        for batch in batches:
            for precision in args.precisions:
                for mode in modes:
                    config = Config(precision, mode, batch, args.attention)
                    spec = {"config": asdict(config), "geometry": asdict(geometry),
                            "steps": steps, "warmup": warmup, "device": str(device),
                            "flops": flops[batch], "threads": torch.get_num_threads()}
                    runs.append({**run_isolated(spec, args.compile_budget, args.timeout),
                                 "round": round_index})
                    print(json.dumps({k: v for k, v in runs[-1].items()
                                      if k not in ("times_s", "warmup_s")}), flush=True)
                    result["total_s"] = time.perf_counter() - began
                    out.write_text(json.dumps(result, indent=2) + "\n")  # a killed run keeps them
    rows = combine_rounds(runs)
    result["combined"] = rows
    _print_table(rows, matmul)
    comparison = format_comparison(rows)
    if comparison.count("\n") > 1:
        print(comparison)
        result["comparison"] = comparison
    result["complete"] = True
    result["machine"]["load_average_end"] = list(os.getloadavg())
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['total_s']:.0f} s)")
    return rows

if __name__ == "__main__":
    main()
