"""``--dry-run``: the runs, their sizes and an estimated time each, with nothing run or written.

The time of a run is estimated as FLOPs per image (train step) x batch x steps at a rate measured
here: a few optimiser steps of the smallest variant are timed in a throwaway directory (the first
step, with its warm-up, left out), at the thread count the runs will use. Larger models usually
reach a higher rate than the smallest, so the estimate leans long for them; evaluation is not
included.
"""

from typing import Any

from rich.console import Console
from rich.table import Table

from . import backend
from .plan import Plan, PlannedRun
from .progress import duration
from .reuse import find_finished

__all__ = ["dry_run", "measure_rate"]


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}"
    return f"{value:.0f}"


def _work(run: PlannedRun) -> float | None:
    """FLOPs of one optimiser step (train-step FLOPs per image x batch)."""
    flops, batch = run.costs.get("flops_train_step"), run.costs.get("batch_size")
    return flops * batch if flops and batch else None


def measure_rate(plan: Plan, steps: int = 4) -> tuple[float, PlannedRun] | None:
    """(FLOP/s, the run timed): ``steps`` optimiser steps of the smallest variant."""
    sized = [run for run in plan.runs if _work(run)]
    if not sized:
        return None
    smallest = min(sized, key=_work)
    backend.set_threads(plan.threads)
    seconds = backend.time_steps(backend.validate(smallest.record, smallest.source), steps)
    return _work(smallest) / seconds, smallest


def _status(plan: Plan, run: PlannedRun, reuse: bool) -> str:
    if plan.finished(run):
        return "finished"
    return "reuse" if reuse and find_finished(plan, run, [plan.out.parent]) else "to do"


def dry_run(plan: Plan, jobs: int, console: Console, timing: bool = True, reuse: bool = True
            ) -> list[dict[str, Any]]:
    """Print the table of variants x seeds with parameters, FLOPs per image and estimated time;
    ``reuse``: a run another ablation beside this one finished shows as 'reuse' (reuse.py)."""
    measured, problem = None, None
    if timing:
        try:
            measured = measure_rate(plan)
        except Exception as exc:  # no data or device here: the table still shows the sizes
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    rate = measured[0] if measured else None
    rows = []
    table = Table("variant", "seed", "status", "params", "FLOPs/img fwd", "FLOPs/img train",
                  "batch", "steps", "est. time", title=f"{plan.ablation.path}: "
                  f"{len(plan.runs)} runs (dry run: nothing runs)", title_justify="left")
    for run in plan.runs:
        costs = run.costs
        steps, work = costs.get("steps"), _work(run)
        seconds = work * steps / rate if rate and work and steps else None
        status = _status(plan, run, reuse)
        rows.append({"run": run.name, "label": run.label, "seed": run.seed, "status": status,
                     **costs, "estimated_s": seconds})
        table.add_row(run.label, str(run.seed), status, _si(costs.get("parameters")),
                      _si(costs.get("flops_forward")), _si(costs.get("flops_train_step")),
                      str(costs.get("batch_size")), str(steps or "epochs"), duration(seconds))
    console.print(table)
    todo = [row for row in rows if row["status"] == "to do"]
    if measured:
        console.print(f"estimated time per run: FLOPs per image x batch x steps at "
                      f"{_si(rate)}FLOP/s, measured by timing steps of "
                      f"'{measured[1].label}' here with {plan.threads} thread(s); training only "
                      "(evaluation not included), an estimate", highlight=False, soft_wrap=True)
    if problem:
        console.print(f"could not time steps here ({problem}): no time estimates",
                      highlight=False, soft_wrap=True)
    known = [row["estimated_s"] for row in todo if row["estimated_s"] is not None]
    total = sum(known) / max(1, jobs) if len(known) == len(todo) else None
    console.print(f"{len(todo)} of {len(rows)} runs to do"
                  + (f", about {duration(total)} of training with {jobs} at a time"
                     if total is not None and todo else ""), highlight=False, soft_wrap=True)
    return rows
