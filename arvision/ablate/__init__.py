"""Ablations: a base recipe, overrides, axes and named variants, each run for several seeds,
evaluated with one protocol and reported side by side (``arvision ablate``, docs/ablations.md).

    spec.py       the ablation file, expanded into runs        plan.py     checks, identities
    protocol.py   the [eval] and [launcher] tables             backend.py  the door to arvision
    driver.py     launch, poll, report as runs finish          worker.py   one run, one process
    launchers.py  local subprocesses or submitit jobs          estimate.py --dry-run
    results.py, stats.py, report.py, plots.py: the report      progress.py the live display

This package sits above the engine: it imports arvision's internals only in ``backend.py``.
Its public names are imported lazily, so ``import arvision.ablate`` stays light.
"""

import importlib
from typing import Any

__all__ = ["Ablation", "EvalProtocol", "LauncherConfig", "Plan", "load_ablation", "make_plan",
           "run_ablation", "write_report"]

_HOMES = {"Ablation": "spec", "load_ablation": "spec", "EvalProtocol": "protocol",
          "LauncherConfig": "protocol", "Plan": "plan", "make_plan": "plan",
          "run_ablation": "driver", "write_report": "report"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
