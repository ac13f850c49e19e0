"""Where training metrics go: ``metrics.jsonl``, the recipe's experiment trackers (TensorBoard,
MLflow, W&B: :mod:`.trackers`) and the terminal."""

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..recipe import recipe_to_dict
from .trackers import Tracker, flatten, open_trackers

__all__ = ["MetricLog", "result_metrics"]


def result_metrics(results: dict[str, Any], prefix: str) -> dict[str, float]:
    """The accuracies (top1, top5) of a results table (eval.json, results.json) as
    ``prefix/a/b/top1`` metric names."""
    return {f"{prefix}/{key.replace('.', '/')}": float(value)
            for key, value in flatten(results).items()
            if key.rpartition(".")[2] in ("top1", "top5") and isinstance(value, int | float)}


class MetricLog:
    """Writes one JSON line and tracker metrics per logged step; shows progress.

    Nothing is opened until :meth:`start` (rank 0 starts it); :meth:`log_results` adds the final
    results after training, and :meth:`close` ends the tracker runs. On a terminal, a rich
    progress bar shows step, loss, images/s and ETA; otherwise (CI, files) a plain line is
    printed per logged step.
    """

    def __init__(self, out_dir: Path, recipe: Any, console: Console | None = None) -> None:
        self.out_dir, self.recipe = out_dir, recipe
        self.console = console or Console(stderr=True)
        self.jsonl = None
        self.trackers: list[Tracker] = []
        self.progress = None
        self.total = 0
        self.step = 0

    def start(self, total_steps: int, resumed_step: int = 0) -> None:
        """Open ``metrics.jsonl`` and the trackers (continuing their runs), show progress.

        ``resumed_step``: the step of the checkpoint training continues from; lines logged past
        it (by a run killed before its next checkpoint) are dropped, as those steps run again.
        """
        self.total = total_steps
        if self.jsonl is None:
            drop_steps_after(self.out_dir / "metrics.jsonl", resumed_step)
            self.trackers = open_trackers(self.recipe.log, self.out_dir, recipe_to_dict(self.recipe))
            for tracker in self.trackers:
                if tracker.where:
                    self.console.print(f"arvision: {tracker.where}", soft_wrap=True,
                                       highlight=False, markup=False)
            self.jsonl = (self.out_dir / "metrics.jsonl").open("a")
        if sys.stderr.isatty():
            self.progress = Progress(
                TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task("train", total=total_steps, loss=float("nan"),
                                               ips=0.0)
            self.progress.start()
        self.started = time.perf_counter()

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.step = step
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        self._each(lambda tracker: tracker.log_metrics(step, values))
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=values["loss"],
                                 ips=values.get("images_per_s", 0.0))
        else:
            shown = "  ".join(f"{key} {value:.4g}" for key, value in values.items())
            self.console.print(f"step {step}/{self.total}  {shown}", soft_wrap=True)

    def _each(self, call: Callable[[Tracker], None]) -> None:
        """``call`` each tracker; one that fails (a server gone, a full disk) is said in one line
        and dropped, and the run goes on: metrics.jsonl keeps every value."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                self.trackers.remove(tracker)
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                self.console.print(f"arvision: warning: {tracker.name} stopped logging "
                                   f"({type(exc).__name__}: {first}); metrics.jsonl has every value",
                                   soft_wrap=True, highlight=False, markup=False)

    def stop(self) -> None:
        """Training is over: end the progress bar (the trackers stay open for the results)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def log_results(self, values: dict[str, float], step: int | None = None) -> None:
        """Final results (probe or fine-tuning accuracies) to every tracker, at the last step."""
        self._each(lambda tracker: tracker.log_results(self.step if step is None else step, values))

    def close(self, ok: bool = True) -> None:
        """End the tracker runs (marked failed unless ``ok``) and close the files."""
        self.stop()
        self._each(lambda tracker: tracker.close(ok))
        self.trackers = []
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


def drop_steps_after(path: Path, step: int) -> None:
    """Rewrite ``path`` (JSON lines with a ``step``) without the lines past ``step``, atomically;
    a torn last line (a run killed mid-write) goes too."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (logged := _step_of(line)) is not None and logged <= step]
    if len(kept) < len(lines):
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text("".join(f"{line}\n" for line in kept))
        os.replace(partial, path)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
