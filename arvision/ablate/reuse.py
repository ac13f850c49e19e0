"""Runs that another ablation already finished, copied instead of trained again.

What a run computes is fixed by its identity (plan.py: the recipe less its neutral keys, the
threads, the processes, the precision) and the evaluation protocol. So before launching anything,
the driver looks for each unfinished run (and the baselines) in the other output directories beside
this one (``OUT/../*/runs/*-<identity[:8]>``, ``OUT/../*/baselines/<identity[:8]>``): a directory
whose ``result.json`` carries the same identity and protocol is copied into place, its
``result.json`` naming where it came from (``reused_from``). Nothing of the source is changed.

The copy goes aside first and is renamed into place: a crash leaves either no run (launched
again) or the whole copy.
"""

import shutil
from pathlib import Path

from .files import read_json, write_json
from .plan import Plan, PlannedRun

__all__ = ["find_finished", "reuse_finished"]


def _candidates(run: PlannedRun, root: Path) -> list[Path]:
    suffix = run.identity[:8]
    pattern = f"*/baselines/{suffix}" if run.kind == "baselines" else f"*/runs/*-{suffix}"
    return sorted(path for path in root.glob(pattern) if path.is_dir())


def find_finished(plan: Plan, run: PlannedRun, roots: list[Path]) -> Path | None:
    """A run directory under ``roots``' ablations that finished ``run`` (same identity and
    protocol), other than the run's own; None when there is none."""
    own = run.directory.resolve()
    for root in roots:
        for candidate in _candidates(run, root):
            if candidate.resolve() == own:
                continue
            result = read_json(candidate / "result.json")
            if result and result.get("identity") == run.identity and \
                    result.get("protocol_id") == plan.protocol_id:
                return candidate
    return None


def _copy(run: PlannedRun, source: Path) -> None:
    """``source`` into ``run.directory``, its result relabelled as this run's."""
    aside = run.directory.with_name(f".{run.directory.name}.reusing")
    shutil.rmtree(aside, ignore_errors=True)
    shutil.copytree(source, aside, ignore=shutil.ignore_patterns(".lock", "job.json", "run.json"))
    result = read_json(aside / "result.json") or {}
    result.update(label=run.label, variant=run.variant, axes=dict(run.axes),
                  reused_from=str(source))
    write_json(aside / "result.json", result)
    if run.directory.exists():  # an unfinished attempt: the copy replaces it
        shutil.rmtree(run.directory)
    run.directory.parent.mkdir(parents=True, exist_ok=True)
    aside.rename(run.directory)


def reuse_finished(plan: Plan, runs: list[PlannedRun], roots: list[Path] | None = None
                   ) -> dict[str, Path]:
    """Copy every run of ``runs`` that another ablation finished; {run name: source}.
    ``roots``: where ablation output directories are searched (default: OUT's parent)."""
    roots = [plan.out.parent] if roots is None else roots
    reused = {}
    for run in runs:
        source = find_finished(plan, run, roots)
        if source is not None:
            _copy(run, source)
            reused[run.name] = source
    return reused
