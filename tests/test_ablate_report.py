"""The report of an ablation from run results (no training here): statistics over seeds, the
CSV/JSON/Markdown files and the plots."""

import csv
import json

import pytest
from PIL import Image
from test_ablate_spec import GRID, write

from arvision.ablate.files import read_metrics, write_json
from arvision.ablate.plan import make_plan
from arvision.ablate.report import write_report
from arvision.ablate.spec import load_ablation
from arvision.ablate.stats import estimate, paired_difference
from arvision.ablate.worker import loss_stats


def test_bootstrap_interval_brackets_the_mean_within_the_values():
    result = estimate([80.0, 82.0, 84.0])
    assert result.mean == pytest.approx(82.0) and result.n == 3
    assert 80.0 <= result.low < 82.0 < result.high <= 84.0
    assert estimate([80.0, 82.0, 84.0]) == result  # seeded
    single = estimate([70.0])
    assert (single.mean, single.low, single.high) == (70.0, None, None)
    assert single.show() == "70.00" and estimate([]) is None


def test_differences_are_paired_by_seed():
    variant, reference = {0: 10.0, 1: 20.0, 2: 30.0}, {0: 9.0, 1: 19.0, 2: 29.0, 3: 50.0}
    difference = paired_difference(variant, reference)
    # unpaired, the seeds' spread (10 points) would dominate; paired, every difference is 1
    assert (difference.mean, difference.low, difference.high, difference.n) == (1.0, 1.0, 1.0, 3)


def test_metrics_of_a_resumed_run_keep_the_last_record_of_each_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 2, "loss": 3.0, "step_time": 0.5, "images_per_s": 10},
             {"step": 4, "loss": 2.0, "step_time": 0.2, "images_per_s": 40},
             {"step": 4, "loss": 2.5, "step_time": 0.3, "images_per_s": 30},  # logged again
             {"step": 6, "loss": 1.5, "step_time": 0.4, "images_per_s": 20}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 8, "lo')
    records = read_metrics(path)
    assert [(r["step"], r["loss"]) for r in records] == [(2, 3.0), (4, 2.5), (6, 1.5)]
    stats = loss_stats(records)
    assert stats["final_loss"] == 1.5 and stats["best_loss"] == 1.5
    assert stats["step_time_s"] == 0.4 and stats["train_s"] == pytest.approx(6 * 0.4)
    assert stats["images_per_s"] == 20


def fake_results(plan, accuracy):
    """A result.json and metrics.jsonl in every run directory, as a worker would leave them."""
    for run in plan.runs:
        run.directory.mkdir(parents=True)
        top1 = accuracy(run)
        write_json(run.directory / "result.json", {
            "identity": run.identity, "protocol_id": plan.protocol_id, "steps": 6,
            "probes": {"linear": {"top1": top1, "top5": 99.0, "lr": 0.01, "weight_decay": 0.0},
                       "knn": {"top1": top1 - 10, "k": 5}},
            "final_loss": 1.0 + run.seed, "best_loss": 0.9, "wall_s": 3.0, "train_s": 2.0,
            "images_per_s": 50.0, "peak_rss_mib": 500.0, "git": "abc123"})
        (run.directory / "metrics.jsonl").write_text("\n".join(
            json.dumps({"step": step, "loss": 2.0 / step + run.seed, "step_time": 0.1,
                        "images_per_s": 80}) for step in (2, 4, 6)))


def test_report_files_from_finished_runs(tmp_path):
    plan = make_plan(load_ablation(write(tmp_path, GRID)), tmp_path / "out", threads=1)
    bonus = {"mse ordering.name=raster": 0.0, "mse ordering.name=random": 1.0,
             "gen-and-disc ordering.name=raster": 5.0, "gen-and-disc ordering.name=random": 2.0}
    fake_results(plan, lambda run: 80.0 + bonus[run.label] + run.seed)
    stale = plan.runs[-1].directory / "result.json"  # an older identity counts as not finished
    stale.write_text(stale.read_text().replace(plan.runs[-1].identity, "0" * 64))
    other = plan.runs[-2].directory / "result.json"  # another protocol: evaluated again
    assert plan.finished(plan.runs[-2])
    other.write_text(other.read_text().replace(plan.protocol_id, "1" * 16))
    assert not plan.finished(plan.runs[-2])
    other.write_text(other.read_text().replace("1" * 16, plan.protocol_id))
    report = tmp_path / "report"
    (report / "recipes").mkdir(parents=True)
    (report / "recipes" / "a-run-of-an-earlier-plan.toml").write_text("")
    write_report(plan, report, {"command": "arvision ablate x", "git": "abc123",
                                "machine": {"summary": "test machine"}}, failed=set())
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert len(rows) == 8
    assert [row["status"] for row in rows] == ["finished"] * 7 + ["to do"]
    assert rows[0]["linear_top1"] == "80.0" and rows[0]["knn_k"] == "5"
    assert rows[0]["ordering.name"] == "raster" and rows[0]["seed"] == "0"
    assert rows[-1]["linear_top1"] == ""
    variants = {v["label"]: v for v in json.loads((report / "results.json").read_text())
                ["variants"]}
    best = variants["gen-and-disc ordering.name=raster"]
    assert best["metrics"]["linear_top1"]["mean"] == 85.5 and best["seeds"] == 2
    assert best["delta"]["linear_top1"] == {"mean": 5.0, "low": 5.0, "high": 5.0, "n": 2}
    assert variants["gen-and-disc ordering.name=random"]["seeds"] == 1
    markdown = (report / "report.md").read_text()
    assert "| gen-and-disc ordering.name=raster | 2 | **85.50 [85.00, 86.00]** | " \
        "5.00 [5.00, 5.00] |" in markdown
    assert "7 of 8 runs finished" in markdown and "arvision ablate x" in markdown
    for run in plan.runs:
        assert f"(recipes/{run.name}.toml)" in markdown
    assert sorted(path.name for path in (report / "recipes").iterdir()) == sorted(
        f"{run.name}.toml" for run in plan.runs)  # the earlier plan's recipe is gone
    for name in ("loss", "accuracy", "compute"):
        with Image.open(report / "plots" / f"{name}.png") as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300


def test_progress_eta_from_the_pace_so_far(tmp_path):
    from io import StringIO

    from rich.console import Console

    from arvision.ablate.progress import AblationProgress, duration

    assert [duration(s) for s in (5, 65, 3725, None)] == ["5s", "1m05s", "1h02m", "?"]
    progress = AblationProgress(total=5, jobs=2, console=Console(file=StringIO()))
    assert progress.eta([]) is None  # nothing measured yet
    progress.durations = [100.0, 140.0]  # two runs took 120 s on average
    progress.done = 2
    progress.active = {"a": (None, 0.0)}
    # the running one has 30 s left; 2 more wait: (30 + 2 x 120) / 2 jobs
    assert progress.eta([(4, 1.0, 30.0)]) == 135.0
