"""After pretraining: probe the encoder and its random initialisation, and show them side by side."""

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..recipe import EvalConfig
from .runner import run_probes

__all__ = ["evaluate_run", "print_comparison"]


def _accuracies(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {probe: {key: result[key] for key in ("top1", "top5") if key in result}
            for probe, result in results.items()}


def evaluate_run(checkpoint: Path, config: EvalConfig) -> dict[str, Any]:
    """Run the recipe's probes; write and return ``results.json`` beside the checkpoint."""
    options = {"probes": config.probes, "blocks": config.blocks or None, "limit": config.limit,
               "eval_limit": config.eval_limit, "attention": config.attention}
    summary: dict[str, Any] = {"pretrained": _accuracies(run_probes(checkpoint, **options))}
    if config.random_init:
        summary["random_init"] = _accuracies(run_probes(checkpoint, random_init=True, **options))
    if config.reference is not None:
        summary["reference"] = {"name": config.reference_name, "top1": config.reference}
    path = checkpoint.parent / "results.json"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, path)
    return summary


def print_comparison(summary: dict[str, Any], console: Console | None = None) -> None:
    """One row per probe: pretrained vs random init top-1 (percent), and the reference."""
    table = Table("probe", "pretrained top-1", "random init top-1", title="evaluation")
    for probe, result in summary["pretrained"].items():
        baseline = summary.get("random_init", {}).get(probe, {}).get("top1")
        table.add_row(probe, f"{result['top1']:.1f}", "-" if baseline is None else f"{baseline:.1f}")
    if "reference" in summary:
        reference = summary["reference"]
        table.add_row(reference["name"], f"{reference['top1']:.1f}", "")
    (console or Console()).print(table)
