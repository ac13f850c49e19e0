"""Where the time of one D-iGPT training step goes: torch.profiler over arvision's step and the
released model's (train_step.py's ``eager`` and ``reference`` modes) at the same geometry.

    python benchmarks/profile_step.py [--precision bf16|fp32] [--batch 8] [--steps 2] [--top 25]
                                      [--out benchmarks/results/profile_step.json]

Each side runs in its own subprocess (the same isolation as train_step.py): its step is built,
warmed up, then ``--steps`` steps run under ``torch.profiler.profile`` (CPU activities, plus CUDA
on a GPU). The tables list the operators with the most self time (time spent in the operator
itself, not in the operators it calls), summed over the profiled steps and divided by their number,
side by side: what arvision spends more on than the plain code is where it is slower.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from measure import ROW, machine_info, run_isolated, sync
from train_step import Config, Geometry, make_step

__all__ = ["format_side_by_side", "main", "profile_config", "top_operators"]

SIDES = ("eager", "reference")


def top_operators(prof: torch.profiler.profile, steps: int, device: torch.device) -> list[dict]:
    """Every operator's self time per step (ms), calls per step and, on CUDA, device time."""
    rows = []
    for event in prof.key_averages():
        row = {"name": event.key, "self_cpu_ms": event.self_cpu_time_total / 1e3 / steps,
               "calls": event.count / steps}
        if device.type == "cuda":
            row["self_device_ms"] = event.self_device_time_total / 1e3 / steps
        rows.append(row)
    key = "self_device_ms" if device.type == "cuda" else "self_cpu_ms"
    return sorted(rows, key=lambda r: r[key], reverse=True)


def profile_config(config: Config, steps: int, warmup: int, device: str,
                   geometry: Geometry = Geometry()) -> dict[str, Any]:
    """Build ``config``'s step, warm it up, profile ``steps`` steps; the operators and the total."""
    dev = torch.device(device)
    step = make_step(config, geometry, dev)
    for _ in range(warmup):
        step()
    sync(dev)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(dev)
    operators = top_operators(prof, steps, dev)
    total = sum(r["self_cpu_ms"] for r in operators)
    return {**asdict(config), "step_self_cpu_ms": total, "operators": operators}


def format_side_by_side(eager: dict[str, Any], reference: dict[str, Any], top: int) -> str:
    """A markdown table: the ``top`` operators of either side by self time, both sides' columns."""
    ours = {r["name"]: r for r in eager["operators"]}
    theirs = {r["name"]: r for r in reference["operators"]}
    names = [r["name"] for r in eager["operators"][:top]]
    names += [r["name"] for r in reference["operators"][:top] if r["name"] not in names]
    lines = ["| operator | arvision ms/step | calls | released ms/step | calls | difference ms |",
             "|---|---:|---:|---:|---:|---:|"]
    empty = {"self_cpu_ms": 0.0, "calls": 0}
    for name in sorted(names, key=lambda n: -max(ours.get(n, empty)["self_cpu_ms"],
                                                   theirs.get(n, empty)["self_cpu_ms"])):
        a, b = ours.get(name, empty), theirs.get(name, empty)
        lines.append(f"| `{name}` | {a['self_cpu_ms']:.1f} | {a['calls']:.0f} | "
                     f"{b['self_cpu_ms']:.1f} | {b['calls']:.0f} | "
                     f"{a['self_cpu_ms'] - b['self_cpu_ms']:+.1f} |")
    lines.append(f"| **total self time** | {eager['step_self_cpu_ms']:.0f} | | "
                 f"{reference['step_self_cpu_ms']:.0f} | | "
                 f"{eager['step_self_cpu_ms'] - reference['step_self_cpu_ms']:+.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="operators listed from each side")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/profile_step.json")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per side")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:  # one side, in a fresh process
        spec = json.loads(args.worker)
        result = profile_config(Config(**spec["config"]), spec["steps"], spec["warmup"],
                                spec["device"], Geometry(**spec.get("geometry", {})))
        print(ROW + json.dumps(result), flush=True)
        return result
    sides = {}
    for mode in SIDES:
        spec = {"config": {"precision": args.precision, "mode": mode, "batch": args.batch},
                "steps": args.steps, "warmup": args.warmup, "device": args.device}
        print(f"profiling {mode} ({args.precision}, batch {args.batch}) ...", file=sys.stderr)
        sides[mode] = run_isolated(__file__, spec, compile_budget=args.timeout,
                                   timeout=args.timeout)
        if sides[mode].get("status") == "failed":
            raise SystemExit(f"profile_step: {mode} failed: {sides[mode].get('error')}")
    table = format_side_by_side(sides["eager"], sides["reference"], args.top)
    print(table)
    result = {"machine": machine_info(torch.device(args.device)), "precision": args.precision,
              "batch": args.batch, "steps": args.steps, **sides, "table": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
