"""``arvision ablate FILE``: run an ablation file's variants x seeds and write the report."""

import enum
import os
import shlex
from pathlib import Path

import typer

from .options import Overrides

__all__ = ["Launcher", "ablate"]


class Launcher(enum.StrEnum):
    local = "local"
    slurm = "slurm"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ablate(
    file: Path = typer.Argument(..., help="Ablation TOML file.", show_default=False,
                                metavar="FILE"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: runs/ablations/<FILE stem>)."),
    report: Path | None = typer.Option(
        None, "--report", help="Directory for the report files (default: the output directory)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every recipe and print the "
                                 "runs with their sizes and estimated times; run nothing."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", min=1, help="Runs at a time (default: "
                                    "[launcher] jobs, else 1 locally, all on Slurm)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads per run "
                                       "(default: [launcher] threads, else cores // jobs)."),
    launcher: Launcher = typer.Option(Launcher.local, "--launcher", help="'local': "
                                      "subprocesses here; 'slurm': one submitit job per run."),
    reuse: bool = typer.Option(True, "--reuse/--no-reuse", help="Copy the runs that ablations "
                               "beside this one (the output directory's siblings) finished with "
                               "the same identity and protocol, instead of training them again."),
    overrides: list[str] = Overrides,
) -> None:
    """Run every variant of FILE for every seed, evaluate them alike, and report side by side.

    Every recipe is checked first (as `arvision check`); runs already finished are skipped and
    interrupted ones resume. The report (report.md, results.csv, results.json, plots/) is
    rewritten as runs finish. See docs/ablations.md.
    """
    from rich.console import Console  # heavy imports (torch) only when the command runs

    from ..ablate.plan import make_plan
    from ..ablate.spec import load_ablation

    ablation = load_ablation(file, overrides)
    config = ablation.config.launcher
    slurm = launcher is Launcher.slurm
    runs = len(ablation.runs) + 1
    jobs = jobs or config.jobs or (runs if slurm else 1)
    threads = threads or config.threads or \
        ((config.cpus_per_task or 1) if slurm else max(1, _cores() // jobs))
    out = out or Path("runs") / "ablations" / file.stem
    world = config.nodes * max(1, config.gpus_per_node) if slurm else 1
    plan = make_plan(ablation, out, threads, world)
    console = Console(stderr=True)
    if dry_run:
        from ..ablate.estimate import dry_run as show

        show(plan, jobs, _stdout(), reuse=reuse)
        return
    from ..ablate.driver import run_ablation
    from ..ablate.report import print_summary

    if slurm:
        from ..ablate.launchers import SubmititLauncher

        runner = SubmititLauncher(config, out / "submitit", threads)
        poll = config.poll_s if config.cluster == "slurm" else 1.0
    else:
        from ..ablate.launchers import LocalLauncher

        runner, poll = LocalLauncher(), 0.5
    report_dir = report or out
    options = [str(file), "--out", str(out)] + (["--report", str(report)] if report else []) + \
        ["--jobs", str(jobs), "--threads", str(threads), "--launcher", launcher.value] + \
        [item for assignment in overrides for item in ("--set", assignment)] + \
        ([] if reuse else ["--no-reuse"])
    command = shlex.join(["arvision", "ablate", *options])
    try:
        outcome = run_ablation(plan, runner, jobs, report_dir, console, poll, command, reuse)
    except KeyboardInterrupt:
        typer.echo("arvision ablate: interrupted; the same command continues where it stopped",
                   err=True)
        raise typer.Exit(130) from None
    print_summary(outcome.tables, _stdout())
    typer.echo(f"report: {report_dir / 'report.md'}")
    if outcome.failed:
        for name, why in outcome.failed:
            typer.echo(f"arvision ablate: run {name} failed: {why}", err=True)
        raise typer.Exit(1)


def _stdout():
    """A console for tables on stdout: the terminal's width, or 160 columns into a file or pipe
    (tables there are read whole, not squeezed into 80 columns)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)
