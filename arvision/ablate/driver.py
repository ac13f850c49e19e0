"""Run an ablation: launch what is not finished, N at a time, and rebuild the report as runs end.

    OUT/ablation.json     the command, code version, machine and runs of the latest invocation
    OUT/runs/<run>/       run.json (what to run), the training run, eval.json, result.json, log.txt
    OUT/baselines/<id>/   the random-init and raw-pixel baselines (result.json)

A run is skipped when its result.json matches its identity and the evaluation protocol. Killing
the ablation (even with SIGKILL) kills its local workers; the next invocation launches again
whatever had not finished: training resumes from its newest checkpoint.
"""

import contextlib
import fcntl
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console

from ..errors import ArvisionError
from .files import write_json
from .launchers import Handle
from .plan import Plan, PlannedRun
from .progress import AblationProgress
from .report import write_report
from .results import Tables
from .reuse import reuse_finished

__all__ = ["Outcome", "git_version", "machine", "run_ablation"]


@attrs.frozen
class Outcome:
    finished: int
    failed: tuple[tuple[str, str], ...]  # (run name, why)
    tables: Tables  # what the final report shows


def git_version() -> str:
    """The commit of the code that runs (``+dirty`` with uncommitted changes to tracked files)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What ran the ablation: CPU model, usable cores, GPUs, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    summary = f"{cpu}, {cores} cores, " + (", ".join(gpus) if gpus else "no GPU") + \
        f", torch {torch.__version__}, Python {platform.python_version()}"
    return {"cpu": cpu, "cores": cores, "gpus": gpus, "torch": torch.__version__,
            "summary": summary}


@contextlib.contextmanager
def ablation_lock(out: Path) -> Iterator[None]:
    """Hold OUT/.ablate.lock: one ablation process per output directory."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".ablate.lock").open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArvisionError(f"{out}: another `arvision ablate` is running in this output "
                                "directory") from None
        yield


def prepare(plan: Plan, run: PlannedRun, info: dict[str, Any]) -> None:
    """Write RUN_DIR/run.json: everything the worker needs to run it."""
    run.directory.mkdir(parents=True, exist_ok=True)
    write_json(run.directory / "run.json", {
        "kind": run.kind, "label": run.label, "variant": run.variant, "axes": dict(run.axes),
        "seed": run.seed, "source": run.source, "recipe": run.record, "identity": run.identity,
        "protocol": plan.protocol, "protocol_id": plan.protocol_id, "threads": plan.threads,
        "costs": run.costs, "command": info["command"], "git": info["git"]})


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else ""
    return ""


def _info(plan: Plan, jobs: int, command: str) -> dict[str, Any]:
    """What OUT/ablation.json and the report's header record about this invocation."""
    return {"file": str(plan.ablation.path), "command": command, "git": git_version(),
            "machine": machine(), "threads": plan.threads, "jobs": jobs,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": [{"name": run.name, "label": run.label, "seed": run.seed,
                      "identity": run.identity} for run in plan.runs]}


def run_ablation(plan: Plan, launcher: Any, jobs: int, report_dir: Path, console: Console,
                 poll_s: float = 0.5, command: str | None = None, reuse: bool = True) -> Outcome:
    """Run every unfinished run (baselines first), ``jobs`` at a time; report as they finish.

    ``command``: how the ablation was started, for the report (default: this process's argv).
    ``reuse``: first copy the runs that ablations beside this one finished (reuse.py).
    """
    info = _info(plan, jobs, command or shlex.join(sys.argv))
    with ablation_lock(plan.out):
        write_json(plan.out / "ablation.json", info)
        todo = [run for run in plan.all_runs if not plan.finished(run)]
        if reuse:
            reused = reuse_finished(plan, todo)
            for name, source in reused.items():
                console.print(f"arvision ablate: reused {name} from {source}", highlight=False,
                              soft_wrap=True)
            todo = [run for run in todo if run.name not in reused]
        write_report(plan, report_dir, info)
        with AblationProgress(len(todo), jobs, console) as progress:
            failed = _launch_all(plan, todo, launcher, jobs, poll_s, info, progress,
                                 lambda failed: write_report(plan, report_dir, info, failed))
        tables = write_report(plan, report_dir, info, set(failed))
    finished = sum(plan.finished(run) for run in plan.all_runs)
    return Outcome(finished, tuple(failed.items()), tables)


def _launch_all(plan: Plan, todo: list[PlannedRun], launcher: Any, jobs: int, poll_s: float,
                info: dict[str, Any], progress: AblationProgress,
                report: Callable[[set[str]], Any]) -> dict[str, str]:
    """Start, poll and collect until every run in ``todo`` ended; {failed run: why}. On any
    exit (Ctrl-C included) the runs still going are stopped."""
    failed: dict[str, str] = {}
    handles: dict[str, tuple[PlannedRun, Handle]] = {}
    for run in todo:  # Slurm jobs of an earlier invocation that still run
        handle = launcher.attach(run.directory)
        if handle is not None:
            handles[run.name] = (run, handle)
            progress.started(run)
    queue = [run for run in todo if run.name not in handles]
    try:
        while queue or handles:
            while queue and len(handles) < jobs:
                run = queue.pop(0)
                prepare(plan, run, info)
                handles[run.name] = (run, launcher.start(run.directory, plan.threads))
                progress.started(run)
            for name, (run, handle) in list(handles.items()):
                code = handle.poll()
                if code is None:
                    continue
                del handles[name]
                ok = plan.finished(run)
                if not ok:
                    log = handle.log_path()
                    failed[name] = f"exit {code}: {_last_line(log)} (log: {log})"
                progress.finished(run, ok, failed.get(name, ""))
                report(set(failed))
            progress.refresh()
            time.sleep(poll_s)
    finally:
        for _, handle in handles.values():
            handle.stop()
    return failed
