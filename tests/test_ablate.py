"""``arvision ablate`` end to end on a tiny ablation (synthetic data, 2 variants x 2 axis values x
2 seeds, 8 steps each): the report, skipping, SIGKILL and restart, a changed variant, --dry-run,
and --jobs 2 against --jobs 1."""

import csv
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from PIL import Image

from arvision.cli import main
from conftest import REPO, TINY, run_cli

ABLATION = '''base = "base.toml"
seeds = [0, 1]

[set]
"train.steps" = 8
"train.checkpoint_every" = 2

[axes]
"ordering.name" = ["raster", "random"]

[[variants]]
name = "mse"

[[variants]]
name = "gen-and-disc"
[[variants.set.decoders]]  # a whole array of tables replaces the base's [[decoders]]
name = "linear"
predicts = "next"
[[variants.set.decoders]]
name = "linear"
predicts = "visible"
weight = WEIGHT

[eval]
knn_ks = [1, 5]

[launcher]
threads = 1

[[claims]]
text = "two decoders beat one"
better = "gen-and-disc ordering.name=raster"
worse = "mse ordering.name=raster"
metrics = ["linear_top1", "knn_top1"]
'''
#: Columns that time the run (or name the code version) rather than describe what it computed.
VOLATILE = {"wall_s", "train_s", "step_time_s", "images_per_s", "peak_rss_mib", "peak_cuda_mib",
            "git"}


def write_ablation(directory: Path, weight: float = 1.0, text: str = ABLATION) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "base.toml").write_text(tomli_w.dumps(TINY))
    path = directory / "ablation.toml"
    path.write_text(text.replace("WEIGHT", str(weight)))
    return path


def ablate(*argv) -> int:
    """``arvision ablate ARGV`` in this process (its workers are subprocesses)."""
    try:
        main(["ablate", *map(str, argv)])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def results(out: Path) -> list[dict[str, str]]:
    """results.csv without the timing columns."""
    with (out / "results.csv").open() as file:
        return [{k: v for k, v in row.items() if k not in VOLATILE}
                for row in csv.DictReader(file)]


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``directory``: (mtime in ns, sha256)."""
    return {str(path.relative_to(directory)): (path.stat().st_mtime_ns,
                                               hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(ablation file, output directory) of the tiny ablation run to the end, 2 at a time."""
    directory = tmp_path_factory.mktemp("ablation")
    path, out = write_ablation(directory), directory / "out"
    assert ablate(path, "--out", out, "--jobs", 2) == 0
    return path, out


def test_tiny_ablation_runs_to_a_report(finished):
    _, out = finished
    rows = results(out)
    assert len(rows) == 8 and {row["status"] for row in rows} == {"finished"}
    assert {(row["variant"], row["ordering.name"], row["seed"]) for row in rows} == {
        (v, o, s) for v in ("mse", "gen-and-disc") for o in ("raster", "random") for s in "01"}
    for row in rows:
        assert float(row["linear_top1"]) > 0 and row["knn_k"] in ("1", "5")
        assert float(row["final_loss"]) > 0 and row["steps"] == "8" and row["train_flops"]
        assert row["threads"] == "1"  # [launcher] threads, as the worker computed with
        run = out / "runs" / row["run"]
        assert (run / "checkpoint.pt").is_file() and (run / "result.json").is_file()
    for name in ("loss", "accuracy", "compute"):
        with Image.open(out / "plots" / f"{name}.png") as image:
            image.verify()
            assert image.format == "PNG"
    report = (out / "report.md").read_text()
    assert "8 of 8 runs finished" in report and "random init (base encoder)" in report
    assert "raw pixels" in report and f"arvision ablate {finished[0]}" in report
    for metric in ("linear_top1", "knn_top1"):  # the claim, paired seed by seed from the rows
        score = {(row["variant"], row["seed"]): float(row[metric]) for row in rows
                 if row["ordering.name"] == "raster"}
        gaps = [score["gen-and-disc", seed] - score["mse", seed] for seed in "01"]
        mean = sum(gaps) / 2
        verdict = "held" if min(gaps) > 0 else "reversed" if max(gaps) < 0 else "not separated"
        assert (f"| two decoders beat one | gen-and-disc ordering.name=raster | mse "
                f"ordering.name=raster | {metric} | {mean:.2f} [{min(gaps):.2f}, {max(gaps):.2f}] | "
                f"{verdict} |") in report


def test_a_finished_ablation_runs_nothing_again(finished):
    path, out = finished
    before = snapshot(out / "runs")
    assert ablate(path, "--out", out, "--jobs", 2) == 0
    assert snapshot(out / "runs") == before


def test_jobs_2_gives_the_results_of_jobs_1(finished, tmp_path):
    path, out = finished
    assert ablate(path, "--out", tmp_path / "one", "--jobs", 1) == 0
    assert results(tmp_path / "one") == results(out)


def test_dry_run_runs_nothing(finished, tmp_path, capsys):
    path, out = finished
    assert ablate(path, "--out", tmp_path / "fresh", "--dry-run") == 0
    shown = capsys.readouterr().out
    assert not (tmp_path / "fresh").exists()
    assert "8 of 8 runs to do" in shown and "est. time" in shown
    assert shown.count("mse ordering.name=raster ") == 2  # one row per seed
    assert "measured by timing steps of 'mse ordering.name=raster'" in shown
    before = snapshot(out)
    assert ablate(path, "--out", out, "--dry-run") == 0
    assert "0 of 8 runs to do" in capsys.readouterr().out
    assert snapshot(out) == before


def test_a_changed_variant_reruns_alone(finished, tmp_path):
    _, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)  # copy2: the same mtimes
    before = {run.name: snapshot(run) for run in (copy / "runs").iterdir()}
    changed = write_ablation(tmp_path, weight=0.5)
    assert ablate(changed, "--out", copy, "--jobs", 2) == 0
    after = {run.name: snapshot(run) for run in (copy / "runs").iterdir()}
    new = sorted(set(after) - set(before))
    assert len(new) == 4 and all(name.startswith("gen-and-disc-") for name in new)
    assert all(after[name] == files for name, files in before.items())  # nothing else touched
    rows = results(copy)
    assert sorted(row["run"] for row in rows if row["variant"] == "gen-and-disc") == new
    old = {row["run"]: row for row in results(out)}
    assert all(row == old[row["run"]] for row in rows if row["variant"] == "mse")


def test_an_ablation_beside_a_finished_one_copies_its_runs(finished, capsys):
    path, out = finished
    again = out.parent / "again"  # a sibling of the finished output directory
    before = snapshot(out)
    code, shown, _ = run_cli(capsys, "ablate", path, "--out", again, "--dry-run", "--no-reuse")
    assert code == 0 and "8 of 8 runs to do" in shown
    code, shown, _ = run_cli(capsys, "ablate", path, "--out", again, "--dry-run")
    assert code == 0 and "0 of 8 runs to do" in shown and shown.count(" reuse ") == 8
    code, _, err = run_cli(capsys, "ablate", path, "--out", again)
    assert code == 0 and err.count("arvision ablate: reused ") == 9  # 8 runs and the baselines
    assert "started" not in err  # no worker ran
    assert snapshot(out) == before  # the source is untouched
    copied = results(again)
    assert [row.pop("reused_from") for row in copied] == [
        str(out / "runs" / row["run"]) for row in copied]
    assert copied == [{k: v for k, v in row.items() if k != "reused_from"} for row in results(out)]
    assert "| finished (reused) |" in (again / "report.md").read_text()


def workers_of(out: Path) -> list[int]:
    """Processes whose command line names ``out`` (the ablation's workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(out) in command:
                pids.append(int(entry.name))
    return pids


def test_sigkill_then_restart_leaves_finished_runs_untouched_and_ends_equal(finished, tmp_path):
    path = write_ablation(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "arvision", "ablate", str(path), "--out",
                               str(out), "--jobs", "1"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mid_run() -> bool:  # some runs finished, and one stopped between checkpoints
        runs = list((out / "runs").glob("*")) if (out / "runs").is_dir() else []
        done = [run for run in runs if (run / "result.json").exists()]
        partial = [run for run in runs if not (run / "result.json").exists()
                   and list((run / "checkpoints").glob("step_*.pt"))]
        return len(done) >= 2 and bool(partial)

    deadline = time.monotonic() + 300
    while not mid_run() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    partial = [run for run in (out / "runs").iterdir() if not (run / "result.json").exists()]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for _ in range(30):  # the workers die with the ablation, at once
        if not workers_of(out):
            break
        time.sleep(0.1)
    assert not workers_of(out)
    time.sleep(2)
    assert not any((run / "result.json").exists() for run in partial)  # no orphan finished one
    done = [run for run in (out / "runs").iterdir() if (run / "result.json").exists()]
    assert 2 <= len(done) < 8
    before = {run.name: snapshot(run) for run in done}
    assert ablate(path, "--out", out, "--jobs", 1) == 0
    assert {run.name: snapshot(out / "runs" / run.name) for run in done} == before
    assert results(out) == results(finished[1])
    resumed = [log for log in (out / "runs").glob("*/log.txt") if "resuming" in log.read_text()]
    assert resumed, "the interrupted run should have resumed from its step checkpoint"


FAILING = '''base = "base.toml"

[set]
"train.steps" = 4

[[variants]]
name = "fine"

[[variants]]
name = "too-few-images"  # valid, but the data set is smaller than a batch: fails when it trains
set = { "data.synthetic.num_images" = 4 }

[eval]
knn_ks = [1, 5]
random_init = false
raw_pixels = false
'''


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, capsys):
    path = write_ablation(tmp_path, text=FAILING)
    out = tmp_path / "out"
    assert ablate(path, "--out", out, "--jobs", 2) == 1
    err = capsys.readouterr().err
    assert re.search(r"run too-few-images-seed0-\w+ failed: exit 2: arvision: error: .*"
                     r"train\.batch_size: 8 is larger than the data set \(4 images\)", err), err
    assert [row["status"] for row in results(out)] == ["finished", "failed"]
    assert "1 of 2 runs finished, 1 failed" in (out / "report.md").read_text()
