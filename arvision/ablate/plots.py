"""The report's figures (matplotlib, PNG through the Agg canvas): loss curves, accuracy bars with
the baselines, and accuracy against training compute.

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot: no global backend or
figure registry is touched, so the report can be written from any thread or process.
"""

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["accuracy_plot", "compute_plot", "loss_plot", "write_plots"]

DPI = 110


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure: Figure, path: Path) -> None:
    """Save as PNG atomically: render aside, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.png")
    figure.savefig(partial, dpi=DPI, bbox_inches="tight", format="png")
    partial.replace(path)


def loss_plot(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> None:
    """Training loss per variant: the mean over seeds at the steps they share, a min-max band."""
    figure, axis = _figure(7, 4.2)
    for label, seeds in curves.items():
        steps = sorted(set.intersection(*(set(s for s, _ in curve) for curve in seeds)))
        if not steps:
            continue
        values = np.array([[dict(curve)[step] for step in steps] for curve in seeds])  # (S, T)
        line = axis.plot(steps, values.mean(0), label=f"{label} (n={len(seeds)})")[0]
        if len(seeds) > 1:
            axis.fill_between(steps, values.min(0), values.max(0), color=line.get_color(),
                              alpha=0.2, linewidth=0)
    axis.set(xlabel="step", ylabel="training loss", title="loss: mean over seeds, band min-max")
    axis.grid(alpha=0.3)
    if curves:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, path)


def _interval(estimate: dict[str, Any] | None) -> tuple[float, float, float]:
    """(mean, below, above) for error bars; zero bars without an interval."""
    if not estimate:
        return (np.nan, 0.0, 0.0)
    mean = estimate["mean"]
    if estimate.get("low") is None:
        return (mean, 0.0, 0.0)
    return (mean, mean - estimate["low"], estimate["high"] - mean)


def accuracy_plot(aggregates: list[dict[str, Any]], baselines: list[dict[str, Any]],
                  metrics: list[str], path: Path) -> None:
    """Top-1 per variant and probe (bars, 95% CI error bars); baselines as dashed lines."""
    accuracies = [name for name in metrics if name.endswith("top1")]
    labels = [agg["label"] for agg in aggregates]
    figure, axis = _figure(max(6, 1.2 * len(labels) * max(1, len(accuracies))), 4.5)
    width = 0.8 / max(1, len(accuracies))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["--", ":", "-."]
    for index, name in enumerate(accuracies):
        values = [_interval(agg["metrics"].get(name)) for agg in aggregates]
        x = np.arange(len(labels)) + (index - (len(accuracies) - 1) / 2) * width
        axis.bar(x, [v[0] for v in values], width, yerr=np.array([[v[1] for v in values],
                                                                  [v[2] for v in values]]),
                 capsize=3, color=colors[index % len(colors)], label=name.removesuffix("_top1"))
        for number, baseline in enumerate(baselines):
            if baseline.get(name) is not None:
                axis.axhline(baseline[name], color=colors[index % len(colors)],
                             linestyle=styles[number % len(styles)], linewidth=1,
                             label=f"{name.removesuffix('_top1')}: {baseline['label']}")
    axis.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    axis.set(ylabel="top-1 (%)", title="probe accuracy: mean over seeds, 95% CI")
    low = [v for agg in aggregates for name in accuracies
           if (v := (agg["metrics"].get(name) or {}).get("low") or
               (agg["metrics"].get(name) or {}).get("mean")) is not None]
    low += [b[name] for b in baselines for name in accuracies if b.get(name) is not None]
    if low:
        axis.set_ylim(max(0.0, min(low) - 5), 100)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)


def compute_plot(aggregates: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    """Top-1 against training compute (FLOPs per image x batch x steps): a colour per variant, a
    marker per probe, 95% CI error bars."""
    figure, axis = _figure(7.5, 4.2)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v"
    flops = []
    for index, name in enumerate(m for m in metrics if m.endswith("top1")):
        for number, agg in enumerate(aggregates):
            mean, below, above = _interval(agg["metrics"].get(name))
            if not agg.get("train_flops") or np.isnan(mean):
                continue
            flops.append(agg["train_flops"])
            axis.errorbar([agg["train_flops"]], [mean], yerr=[[below], [above]], capsize=3,
                          fmt=markers[index % len(markers)], color=colors[number % len(colors)],
                          label=f"{agg['label']}: {name.removesuffix('_top1')}")
    if flops and max(flops) > 10 * min(flops):
        axis.set_xscale("log")
    axis.set(xlabel="training compute (FLOPs: per image x batch x steps)", ylabel="top-1 (%)",
             title="accuracy against compute (mean over seeds, 95% CI)")
    axis.grid(alpha=0.3)
    if flops:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, path)


def write_plots(tables: Any, directory: Path) -> dict[str, Path]:
    """The three figures into ``directory``; returns {name: path}."""
    paths = {name: directory / f"{name}.png" for name in ("loss", "accuracy", "compute")}
    loss_plot(tables.curves(), paths["loss"])
    aggregates = [agg | {"metrics": {k: v and v.as_dict() for k, v in agg["metrics"].items()}}
                  for agg in tables.aggregates]
    accuracy_plot(aggregates, tables.baselines, tables.metrics, paths["accuracy"])
    compute_plot(aggregates, tables.metrics, paths["compute"])
    return paths
