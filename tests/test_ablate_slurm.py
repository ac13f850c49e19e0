"""``--launcher slurm``: each run a submitit job. submitit's local executor runs the same job
objects (pickled ``slurm_job`` calls) as subprocesses, so the Slurm path is exercised here."""

import csv
import json
import os

import pytest
from test_ablate import ablate, write_ablation

from arvision.ablate.launchers import SubmititLauncher
from arvision.ablate.protocol import LauncherConfig
from arvision.checkpoint import load_checkpoint

TWO_RUNS = '''base = "base.toml"
seeds = [0, 1]

[set]
"train.steps" = 4
"train.device" = "cpu"  # two tasks train with gloo even where there is one GPU

[eval]
knn_ks = [1, 5]
random_init = false
raw_pixels = false

[launcher]
cluster = "local"
gpus_per_node = TASKS
threads = 1
time_min = 10
poll_s = 1
'''


@pytest.mark.parametrize("tasks", [0, 2], ids=["one-task", "two-tasks"])
def test_submitit_local_executor_runs_a_two_run_ablation(tmp_path, tasks):
    path = write_ablation(tmp_path, text=TWO_RUNS.replace("TASKS", str(tasks)))
    out = tmp_path / "out"
    assert ablate(path, "--out", out, "--launcher", "slurm") == 0
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["seed"], row["status"]) for row in rows] == [("0", "finished"), ("1", "finished")]
    assert len(list((out / "submitit").glob("*_0_log.out"))) == 2  # one job per run
    for row in rows:
        run = out / "runs" / row["run"]
        job = json.loads((run / "job.json").read_text())
        assert job["cluster"] == "local" and job["job_id"]
        assert float(row["linear_top1"]) > 0 and row["steps"] == "4"
        # gpus_per_node = 2: one task per GPU, so the run trained on 2 processes (gloo on CPU)
        assert load_checkpoint(run / "checkpoint.pt")["world"] == max(1, tasks)


def test_slurm_jobs_ask_for_what_the_launcher_table_says(tmp_path, monkeypatch):
    srun = tmp_path / "bin" / "srun"  # submitit's Slurm executor wants srun on the PATH
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
    config = LauncherConfig(partition="gpu", nodes=2, gpus_per_node=4, cpus_per_task=8,
                            mem_gb=64, time_min=90, account="vision", qos="high",
                            setup=("module load cuda",))
    launcher = SubmititLauncher(config, tmp_path / "submitit", threads=8)
    # the sbatch script submitit would submit (a private helper: no sbatch runs here)
    script = launcher.executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4",
                 "--cpus-per-task=8", "--mem=64GB", "--time=90", "--account=vision",
                 "--qos=high", "module load cuda"):
        assert line in script, line
