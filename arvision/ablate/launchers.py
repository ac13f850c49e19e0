"""Where runs execute: local subprocesses (``--jobs N``) or submitit jobs (``--launcher slurm``).

A launcher starts a run from its directory (``run.json`` is already there) and returns a handle;
the driver polls handles. Local workers get ``threads`` intra-op threads (OMP_NUM_THREADS and
``torch.set_num_threads``) and end with the ablation process (PR_SET_PDEATHSIG); their output
goes to ``RUN_DIR/log.txt``.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Protocol

from .files import read_json, write_json
from .protocol import LauncherConfig

__all__ = ["Handle", "LocalLauncher", "SubmititLauncher"]

#: Slurm states of a job that is still queued or running (its run must not be launched again).
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


class Handle(Protocol):
    def poll(self) -> int | None:
        """None while running; then 0 when the worker succeeded, else its failure code."""

    def stop(self) -> None:
        """End the run now (it resumes from its last checkpoint next time)."""

    def log_path(self) -> Path:
        """Where the run's output went."""


class LocalHandle:
    def __init__(self, process: subprocess.Popen, log: IO[bytes]) -> None:
        self.process, self.log = process, log

    def log_path(self) -> Path:
        return Path(self.log.name)

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and not self.log.closed:
            self.log.close()
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


class LocalLauncher:
    """Each run in a child process of this one."""

    def start(self, run_dir: Path, threads: int) -> LocalHandle:
        log = (run_dir / "log.txt").open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "arvision.ablate.worker", str(run_dir),
                   "--parent", str(os.getpid())]
        # its own session: a Ctrl-C in the terminal reaches the driver, which stops the workers
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        return LocalHandle(process, log)

    def attach(self, run_dir: Path) -> None:
        return None  # local workers die with the ablation: nothing survives to attach to


class SubmititHandle:
    def __init__(self, job: Any, cancel_on_stop: bool) -> None:
        self.job, self.cancel_on_stop = job, cancel_on_stop

    def log_path(self) -> Path:
        return Path(self.job.paths.stderr)

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            self.job.results()  # every task's (one per GPU)
        except Exception:  # the job's traceback is in its submitit log
            return 1
        return 0

    def stop(self) -> None:
        """Slurm jobs keep running (a restarted ablation attaches to them); local ones end."""
        if self.cancel_on_stop:
            self.job.cancel(check=False)


class SubmititLauncher:
    """Each run a submitit job (Slurm, or submitit's local executor); jobs outlive the driver,
    so a restarted ablation attaches to the Slurm jobs still queued or running."""

    def __init__(self, config: LauncherConfig, folder: Path, threads: int) -> None:
        import submitit

        self.submitit, self.config, self.folder = submitit, config, folder
        tasks = max(1, config.gpus_per_node)
        self.executor = submitit.AutoExecutor(folder=folder, cluster=config.cluster)
        self.executor.update_parameters(
            timeout_min=config.time_min, nodes=config.nodes, tasks_per_node=tasks,
            gpus_per_node=config.gpus_per_node or None, cpus_per_task=config.cpus_per_task or threads,
            mem_gb=config.mem_gb, slurm_partition=config.partition, slurm_account=config.account,
            slurm_qos=config.qos, slurm_constraint=config.constraint,
            slurm_setup=list(config.setup) or None, local_setup=list(config.setup) or None)

    def start(self, run_dir: Path, threads: int) -> SubmititHandle:
        from .worker import slurm_job

        self.executor.update_parameters(name=f"ablate-{run_dir.name}")
        job = self.executor.submit(slurm_job, str(run_dir))
        write_json(run_dir / "job.json", {"job_id": job.job_id, "cluster": self.config.cluster,
                                          "folder": str(self.folder)})
        return SubmititHandle(job, self.config.cluster != "slurm")

    def attach(self, run_dir: Path) -> SubmititHandle | None:
        """The Slurm job that is still working on ``run_dir``, if any."""
        recorded = read_json(run_dir / "job.json")
        if not recorded or recorded.get("cluster") != "slurm":
            return None
        job = self.submitit.SlurmJob(folder=recorded["folder"], job_id=recorded["job_id"])
        try:
            state = job.state
        except Exception:
            return None
        return SubmititHandle(job, False) if state.split()[0] in ALIVE else None
