"""One run of an ablation, in its own process: train (or resume), evaluate, write result.json.

    python -m arvision.ablate.worker RUN_DIR [--parent PID]      (the local launcher)
    slurm_job(RUN_DIR)                                           (a submitit job, any task count)

The run is described by ``RUN_DIR/run.json`` (written by the driver before each launch). The
result is written last and atomically, so a run killed at any point has no result.json and is
simply launched again: training resumes from its newest step checkpoint (or starts again if it
had none), evaluation reuses the cached features.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ArvisionError
from . import backend
from .files import read_metrics, write_json

__all__ = ["execute", "loss_stats", "main", "run_lock", "slurm_job"]


def loss_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best logged loss, median step time and throughput, training seconds."""
    if not records:
        return {}
    times = [r["step_time"] for r in records if r["step"] > 1] or [records[-1]["step_time"]]
    step_time = statistics.median(times)
    return {"final_loss": records[-1]["loss"], "best_loss": min(r["loss"] for r in records),
            "step_time_s": step_time, "train_s": step_time * records[-1]["step"],
            "images_per_s": statistics.median(r["images_per_s"] for r in records)}


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` exclusively: one process works on a run at a time."""
    with (run_dir / ".lock").open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArvisionError(f"{run_dir}: another process is running this run") from None
        yield


def _peak_memory() -> dict[str, float | None]:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None
    return {"peak_rss_mib": round(rss, 1), "peak_cuda_mib": cuda and round(cuda, 1)}


def execute(run_dir: Path) -> dict[str, Any] | None:
    """Run what ``RUN_DIR/run.json`` describes; returns the result (None on ranks other than 0)."""
    task = json.loads((run_dir / "run.json").read_text())
    backend.set_threads(task["threads"])
    first_rank = int(os.environ.get("RANK", "0")) == 0
    if task["kind"] == "baselines" and not first_rank:
        return None  # evaluation runs on one process
    with run_lock(run_dir) if first_rank else contextlib.nullcontext():
        started = time.perf_counter()
        recipe = backend.validate(task["recipe"], task["source"])
        protocol = task["protocol"]
        if task["kind"] == "baselines":
            payload = {"baselines": backend.evaluate_baselines(recipe, protocol, run_dir,
                                                              task["source"])}
        elif task["kind"] == "finetune":
            main, steps, scores = backend.finetune(recipe, run_dir, task["source"])
            if not main:
                return None
            payload = {"probes": {"finetune": scores}, "steps": steps,
                       **loss_stats(read_metrics(run_dir / "metrics.jsonl"))}
        else:
            reports, steps, checkpoint = backend.pretrain(recipe, run_dir, task["source"])
            if not reports:
                return None
            payload = {"probes": backend.evaluate_checkpoint(checkpoint, protocol), "steps": steps,
                       **loss_stats(read_metrics(run_dir / "metrics.jsonl"))}
        result = {key: task[key] for key in ("kind", "label", "variant", "axes", "seed",
                                             "identity", "protocol_id", "costs", "command",
                                             "git")}
        result.update(payload, threads=backend.threads_in_use(),
                      wall_s=round(time.perf_counter() - started, 2),
                      **_peak_memory(), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_json(run_dir / "result.json", result)
        return result


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends (a SIGKILLed ablation leaves no run behind)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):  # not Linux: watch the parent instead
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def slurm_job(run_dir: str) -> str | None:
    """A submitit job: one task per GPU joins torch.distributed (torchrun's variables)."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                              overwrite=True)
    result = execute(Path(run_dir))
    return None if result is None else str(Path(run_dir) / "result.json")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0])
    if "--parent" in args:
        die_with_parent(int(args[args.index("--parent") + 1]))
    try:
        execute(run_dir)
    except ArvisionError as exc:
        print(f"arvision: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
