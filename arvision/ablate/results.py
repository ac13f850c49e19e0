"""The numbers of an ablation: one row per run, one aggregate per variant (mean and 95% CI over
seeds, paired difference to the reference variant), and the baselines.

    row       {label, variant, <axis keys>, seed, status, run, linear_top1, ..., final_loss, ...}
    aggregate {label, seeds, metrics: {name: Estimate}, delta: {name: Estimate}, costs...}
"""

from typing import Any

from .claims import claim_rows
from .files import read_metrics
from .plan import Plan, PlannedRun
from .stats import Estimate, estimate, paired_difference

__all__ = ["HIGHER", "LOWER", "Tables", "aggregate", "baseline_rows", "collect", "metric_names",
           "run_row"]

HIGHER = "top1"  # metrics ending so are accuracies (higher is better)
LOWER = ("final_loss", "best_loss")  # lower is better
CHOSEN = {"linear": ("lr", "weight_decay"), "knn": ("k",), "attentive": ("lr",)}
RUN_FIELDS = ("steps", "final_loss", "best_loss", "train_s", "wall_s", "step_time_s",
              "images_per_s", "peak_rss_mib", "peak_cuda_mib", "threads")


def run_row(run: PlannedRun, result: dict[str, Any] | None, status: str) -> dict[str, Any]:
    """One run's row: what it is, its metrics (when finished) and its costs."""
    row: dict[str, Any] = {"label": run.label, "variant": run.variant, **dict(run.axes),
                           "seed": run.seed, "status": status, "run": run.name}
    if result is not None:
        for probe, scores in result.get("probes", {}).items():
            row[f"{probe}_top1"] = scores["top1"]
            row[f"{probe}_top5"] = scores.get("top5")
            for key in CHOSEN.get(probe, ()):
                row[f"{probe}_{key}"] = scores.get(key)
        row.update({key: result.get(key) for key in RUN_FIELDS})
    costs = run.costs
    steps = row.get("steps") or costs.get("steps")
    row.update(params=costs.get("parameters"), flops_per_image=costs.get("flops_train_step"),
               batch_size=costs.get("batch_size"))
    if steps and costs.get("flops_train_step") and costs.get("batch_size"):
        row["train_flops"] = costs["flops_train_step"] * costs["batch_size"] * steps
    row["identity"] = run.identity
    if result is not None:
        row["git"] = result.get("git")
        row["reused_from"] = result.get("reused_from")  # copied from another ablation (reuse.py)
    return row


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The accuracy columns present (``linear_top1``, ...), then the losses."""
    names = list(dict.fromkeys(key for row in rows for key in row if key.endswith(HIGHER)))
    return names + [name for name in LOWER if any(row.get(name) is not None for row in rows)]


def aggregate(plan: Plan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant label, in plan order: estimates over its finished seeds and the paired
    difference to the reference variant."""
    finished = [row for row in rows if row["status"] == "finished"]
    names = metric_names(finished)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in plan.runs:
        by_label.setdefault(run.label, [])
    for row in finished:
        by_label[row["label"]].append(row)
    reference = by_label.get(plan.ablation.reference, [])
    aggregates = []
    for label, members in by_label.items():
        metrics: dict[str, Estimate | None] = {}
        delta: dict[str, Estimate | None] = {}
        for name in names:
            metrics[name] = estimate([row.get(name) for row in members])
            delta[name] = paired_difference({r["seed"]: r.get(name) for r in members},
                                            {r["seed"]: r.get(name) for r in reference}) \
                if label != plan.ablation.reference else None
        first = next(run for run in plan.runs if run.label == label)
        costs = next(row for row in rows if row["label"] == label)
        aggregates.append({
            "label": label, "seeds": len(members), "metrics": metrics, "delta": delta,
            "params": costs.get("params"), "flops_per_image": costs.get("flops_per_image"),
            "train_flops": costs.get("train_flops"), "axes": dict(first.axes),
            "train_s": estimate([row.get("train_s") for row in members]),
            "wall_s": estimate([row.get("wall_s") for row in members]),
            "images_per_s": estimate([row.get("images_per_s") for row in members]),
            "peak_rss_mib": estimate([row.get("peak_rss_mib") for row in members]),
        })
    return aggregates


def baseline_rows(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The baselines as rows: ``{'label': 'random init (base encoder)', 'linear_top1': ...}``."""
    if result is None:
        return []
    names = {"random_init": "random init (base encoder)", "raw_pixels": "raw pixels"}
    rows = []
    for key, probes in result.get("baselines", {}).items():
        row: dict[str, Any] = {"label": names.get(key, key), "baseline": key}
        for probe, scores in probes.items():
            row[f"{probe}_top1"] = scores["top1"]
            for chosen in CHOSEN.get(probe, ()):
                row[f"{probe}_{chosen}"] = scores.get(chosen)
        rows.append(row)
    return rows


class Tables:
    """Everything the report shows, read from the run directories once."""

    def __init__(self, plan: Plan, failed: set[str] = frozenset()) -> None:
        self.plan = plan
        self.rows = []
        for run in plan.runs:
            finished = plan.finished(run)
            status = "finished" if finished else "failed" if run.name in failed else "to do"
            self.rows.append(run_row(run, run.result() if finished else None, status))
        self.aggregates = aggregate(plan, self.rows)
        baselines = plan.baselines
        self.baselines = baseline_rows(baselines.result() if baselines and
                                       plan.finished(baselines) else None)
        self.metrics = metric_names([r for r in self.rows if r["status"] == "finished"])
        self.claims = claim_rows(plan, self.rows)

    def curves(self) -> dict[str, list[list[tuple[int, float]]]]:
        """Per label, each finished seed's loss curve [(step, loss), ...]."""
        curves: dict[str, list[list[tuple[int, float]]]] = {}
        for run, row in zip(self.plan.runs, self.rows, strict=True):
            if row["status"] == "finished":
                records = read_metrics(run.directory / "metrics.jsonl")
                curves.setdefault(run.label, []).append([(r["step"], r["loss"]) for r in records])
        return curves


def collect(plan: Plan, failed: set[str] = frozenset()) -> Tables:
    return Tables(plan, failed)
