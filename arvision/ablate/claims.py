"""Published claims tested on an ablation's runs (its ``[[claims]]``): on each metric, the paired
difference better - worse over the seeds both variants finished, and a verdict:

    held           the difference's 95% interval lies above 0
    reversed       it lies below 0: the other variant scored higher
    not separated  it contains 0
    one seed       a single pair: the sign alone, no interval
    not measured   no seed finished on both sides

With 2 or 3 seeds the bootstrap interval is the seeds' spread (stats.py): "held" then says that
every seed agreed, not that a calibrated test passed.
"""

from typing import Any

from .plan import Plan
from .stats import Estimate, paired_difference

__all__ = ["claim_rows", "verdict"]


def verdict(difference: Estimate | None) -> str:
    if difference is None:
        return "not measured"
    if difference.low is None or difference.high is None:
        return "one seed: " + ("higher" if difference.mean > 0 else "not higher")
    if difference.low > 0:
        return "held"
    if difference.high < 0:
        return "reversed"
    return "not separated"


def claim_rows(plan: Plan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim and metric: text, better, worse, metric, difference, verdict."""
    finished = [row for row in rows if row["status"] == "finished"]

    def by_seed(label: str, metric: str) -> dict[int, float]:
        return {row["seed"]: row.get(metric) for row in finished if row["label"] == label}

    table = []
    for claim in plan.ablation.config.claims:
        for metric in claim.metrics:
            difference = paired_difference(by_seed(claim.better, metric),
                                           by_seed(claim.worse, metric))
            table.append({"claim": claim.text, "source": claim.source, "better": claim.better,
                          "worse": claim.worse, "metric": metric,
                          "difference": difference and difference.as_dict(),
                          "shown": difference.show() if difference else "-",
                          "verdict": verdict(difference)})
    return table
