"""What the ablation shows while it runs: runs done / to do, ETA, and each running run's step
and loss (read from its ``metrics.jsonl``). A live rich table on a terminal; otherwise one line
per run started or finished."""

import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .files import read_metrics
from .plan import PlannedRun

__all__ = ["AblationProgress", "duration"]


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s``; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else \
        f"{secs}s"


class AblationProgress:
    """Tracks started and finished runs; ``refresh()`` redraws (call it while polling)."""

    def __init__(self, total: int, jobs: int, console: Console) -> None:
        self.total, self.jobs, self.console = total, jobs, console
        self.done = self.failed = 0
        self.active: dict[str, tuple[PlannedRun, float]] = {}  # name -> (run, start time)
        self.durations: list[float] = []
        self.live = Live(console=console, refresh_per_second=2, transient=True) \
            if console.is_terminal else None

    def __enter__(self) -> "AblationProgress":
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.live is not None:
            self.live.stop()

    def started(self, run: PlannedRun) -> None:
        self.active[run.name] = (run, time.monotonic())
        self._line(f"started {run.name}")

    def finished(self, run: PlannedRun, ok: bool, note: str = "") -> None:
        _, began = self.active.pop(run.name, (run, time.monotonic()))
        seconds = time.monotonic() - began
        if ok:
            self.done += 1
            self.durations.append(seconds)
        else:
            self.failed += 1
        what = "finished" if ok else "FAILED"
        self._line(f"{what} {run.name} in {duration(seconds)} [{self.done + self.failed}/"
                   f"{self.total}]{': ' + note if note else ''}")

    def _line(self, text: str) -> None:
        self.console.print(f"arvision ablate: {text}", highlight=False, soft_wrap=True)
        self.refresh()

    def _state(self, run: PlannedRun, began: float) -> tuple[int | None, float | None, float]:
        """(step, loss, estimated seconds left) of a running run."""
        records = read_metrics(run.directory / "metrics.jsonl")
        step = records[-1]["step"] if records else None
        loss = records[-1]["loss"] if records else None
        elapsed = time.monotonic() - began
        total = run.costs.get("steps")
        if step and total:
            return step, loss, elapsed * (total - step) / step
        mean = sum(self.durations) / len(self.durations) if self.durations else None
        return step, loss, None if mean is None else max(0.0, mean - elapsed)

    def eta(self, states: list[tuple[int | None, float | None, float | None]]) -> float | None:
        """Seconds until every run is done, at the pace so far, ``jobs`` at a time."""
        left = [state[2] for state in states]
        per_run = (sum(self.durations) / len(self.durations)) if self.durations else None
        waiting = self.total - self.done - self.failed - len(self.active)
        if None in left or (waiting and per_run is None):
            return None
        return (sum(left) + waiting * (per_run or 0.0)) / max(1, self.jobs)

    def refresh(self) -> None:
        if self.live is None:
            return
        states = {name: self._state(run, began) for name, (run, began) in self.active.items()}
        table = Table("run", "step", "loss", "elapsed", box=None, pad_edge=False)
        for name, (run, began) in self.active.items():
            step, loss, _ = states[name]
            total = run.costs.get("steps") or "?"
            table.add_row(name, f"{step or 0}/{total}", "-" if loss is None else f"{loss:.4f}",
                          duration(time.monotonic() - began))
        header = Text(f"ablation: {self.done}/{self.total} done, {len(self.active)} running, "
                      f"{self.failed} failed, ETA {duration(self.eta(list(states.values())))}")
        self.live.update(Group(header, table))
