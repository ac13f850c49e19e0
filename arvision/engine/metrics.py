"""Where training metrics go: ``metrics.jsonl``, TensorBoard, and the terminal."""

import json
import sys
import time
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
from torch.utils.tensorboard import SummaryWriter

__all__ = ["MetricLog"]


class MetricLog:
    """Writes one JSON line and TensorBoard scalars per logged step; shows progress.

    On a terminal, a rich progress bar shows step, loss, images/s and ETA; otherwise (CI, files)
    a plain line is printed per logged step.
    """

    def __init__(self, out_dir: Path, total_steps: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.jsonl = (out_dir / "metrics.jsonl").open("a")
        self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        self.total = total_steps
        self.started = time.perf_counter()
        self.progress = None
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

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, **values}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            self.tensorboard.add_scalar(key, value, step)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=values["loss"],
                                 ips=values.get("images_per_s", 0.0))
        else:
            shown = "  ".join(f"{key} {value:.4g}" for key, value in values.items())
            self.console.print(f"step {step}/{self.total}  {shown}", soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.jsonl.close()
        self.tensorboard.close()
