"""Experiment trackers ([log] trackers): TensorBoard, MLflow on a real local SQLite store and W&B in
offline mode, each read back after a real `arvision run` (training, then probes): the same step
metrics, the resolved recipe and the final probe results in each; a resumed run continues the same
tracker runs. Nothing reaches the network."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from arvision.engine.trackers import flatten, open_trackers
from arvision.errors import RecipeError
from arvision.recipe import LogConfig
from conftest import tiny_data

mlflow = pytest.importorskip("mlflow", reason="pip install 'arvision[mlflow]'")
pytest.importorskip("wandb", reason="pip install 'arvision[wandb]'")

TRACKERS = ["tensorboard", "mlflow", "wandb"]
EVAL = {"probes": ["linear"], "limit": 32, "eval_limit": 16, "random_init": False}


def run_arvision(tmp: Path, *argv) -> subprocess.CompletedProcess:
    """``arvision ARGV`` in a fresh process whose every tracker file stays under ``tmp``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true",
           **{name: str(tmp / "wandb_home" / name.lower()) for name in (
               "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")}}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, "-m", "arvision", *map(str, argv)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)


def wandb_records(run_dir: Path) -> list:
    """The records of W&B's offline transaction log (``run-ID.wandb``): LevelDB log blocks of
    protobuf ``Record``s after a 7-byte ``:W&B`` header."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(run_dir.glob("offline-run-*/run-*.wandb")):
        data, block, pos, pending = path.read_bytes(), 32768, 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk  # full / first, middle / last
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
    return records


def wandb_items(records, kind: str) -> list[dict]:
    """``history`` rows, ``summary`` updates or the ``run``'s config, as dicts of JSON values."""
    found = []
    for record in records:
        if record.WhichOneof("record_type") != kind:
            continue
        items = {"history": lambda r: r.history.item, "summary": lambda r: r.summary.update,
                 "run": lambda r: r.run.config.update}[kind](record)
        found.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                      for item in items})
    return found


def jsonl(path: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny pretraining with probes, logged to all three trackers, then resumed to step 6."""
    tmp = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    (tmp / "store").mkdir()
    data = tiny_data(eval=EVAL, log={"trackers": TRACKERS, "mlflow_uri": store,
                                     "wandb_mode": "offline", "project": "tests"})
    recipe = tmp / "tiny.toml"
    recipe.write_text(tomli_w.dumps(data))
    first = run_arvision(tmp, "run", recipe, "--out", tmp / "run")
    assert first.returncode == 0, first.stderr
    ids = json.loads((tmp / "run" / "trackers.json").read_text())
    steps_4 = jsonl(tmp / "run" / "metrics.jsonl")
    resumed = run_arvision(tmp, "run", recipe, "--out", tmp / "run", "--set", "train.steps=6")
    assert resumed.returncode == 0, resumed.stderr
    return {"tmp": tmp, "store": store, "out": tmp / "run", "ids": ids, "first": first,
            "resumed": resumed, "steps_4": steps_4}


def test_mlflow_holds_the_metrics_recipe_and_results(tracked):
    out, ids = tracked["out"], tracked["ids"]
    client = mlflow.MlflowClient(tracking_uri=tracked["store"])
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [ids["mlflow"]]  # the resume continued it
    run = runs[0]
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    metrics = jsonl(out / "metrics.jsonl")
    for key in ("loss", "loss/linear_next", "lr", "grad_norm"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == pytest.approx({step: row[key] for step, row in metrics.items()}), key
    assert sorted(metrics) == [2, 4, 6]
    assert run.data.params["train.steps"] == "4"  # the recipe it started with
    assert run.data.params["decoders.0.name"] == "linear"
    results = json.loads((out / "results.json").read_text())
    assert run.data.metrics["eval/pretrained/linear/top1"] == pytest.approx(
        results["pretrained"]["linear"]["top1"])
    recipe = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                      artifact_path="recipe.toml",
                                                      tracking_uri=tracked["store"]))
    assert recipe.read_text() == (out / "recipe.toml").read_text().replace("steps = 4",
                                                                          "steps = 6")
    assert not (tracked["tmp"] / "mlruns").exists()  # artifacts beside the store, not in the cwd


def test_wandb_offline_holds_the_metrics_recipe_and_results(tracked):
    out, ids = tracked["out"], tracked["ids"]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith(ids["wandb"]) for run in runs)  # one run id
    records = wandb_records(out / "wandb")
    history = {row["_step"]: row for row in wandb_items(records, "history")}
    metrics = jsonl(out / "metrics.jsonl")
    assert sorted(history) == sorted(metrics) == [2, 4, 6]
    for step, row in metrics.items():
        assert history[step]["loss"] == pytest.approx(row["loss"])
        assert history[step]["loss/linear_next"] == pytest.approx(row["loss/linear_next"])
    config = wandb_items(records, "run")[0]
    assert config["train"]["steps"] == 4 and config["decoders"][0]["name"] == "linear"
    results = json.loads((out / "results.json").read_text())
    summary = {key: value for update in wandb_items(records, "summary") for key, value in
               update.items()}
    assert summary["eval/pretrained/linear/top1"] == pytest.approx(
        results["pretrained"]["linear"]["top1"])


def test_tensorboard_holds_the_metrics_recipe_and_results(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tracked["out"]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    loss = {event.step: event.value for event in events.Scalars("loss")}
    assert loss == pytest.approx({step: row["loss"] for step, row in jsonl(
        out / "metrics.jsonl").items()})
    results = json.loads((out / "results.json").read_text())
    assert events.Scalars("eval/pretrained/linear/top1")[-1].value == pytest.approx(
        results["pretrained"]["linear"]["top1"])
    recipe = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'name = "linear"' in recipe


def test_the_trackers_say_where_their_runs_are_and_nothing_else(tracked):
    for proc in (tracked["first"], tracked["resumed"]):
        lines = proc.stderr.splitlines()
        assert [line.split(" run ")[0] for line in lines if " run " in line] == [
            "arvision: MLflow", "arvision: W&B"]
        assert f"kept offline in {tracked['out'] / 'wandb'}" in proc.stderr
        assert all(line.startswith(("arvision: ", "step ")) for line in lines), lines
    assert f"MLflow run {tracked['ids']['mlflow']}" in tracked["resumed"].stderr


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(RecipeError, match=r"pip install 'arvision\[wandb\]'"):
        open_trackers(LogConfig(trackers=("wandb",)), tmp_path, {"run": {"name": "x"}})


def test_a_store_mlflow_refuses_is_one_line_naming_the_key(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tomli_w.dumps(tiny_data(log={"trackers": ["mlflow"],
                                                   "mlflow_uri": "file:./mlruns"})))
    proc = run_arvision(tmp_path, "run", recipe, "--out", tmp_path / "run")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("arvision: error: log.trackers: mlflow could not start a run")


def test_flatten_names_nested_tables_and_lists_of_tables():
    assert flatten({"a": {"b": 1}, "decoders": [{"name": "x"}], "taps": [1, 2]}) == {
        "a.b": 1, "decoders.0.name": "x", "taps": [1, 2]}


def test_a_tracker_config_is_checked_with_the_recipe(tmp_path):
    from arvision.plugins import get_plugins
    from arvision.recipe import structure_recipe

    for log, message in (({"trackers": ["neptune"]}, "log.trackers"),
                         ({"trackers": ["mlflow", "mlflow"]}, "each tracker once")):
        with pytest.raises(RecipeError, match=message):
            structure_recipe(tiny_data(log=log), "tiny.toml", get_plugins())


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path, monkeypatch,
                                                                      capsys):
    from arvision.engine import metrics
    from arvision.engine.trackers import Tracker
    from conftest import tiny_recipe

    class Gone(Tracker):
        name = "mlflow"

        def log_metrics(self, step, values):
            raise ConnectionError("server closed the connection\nmore detail")

    class Kept(Tracker):
        name = "tensorboard"

        def __init__(self):
            self.seen = []

        def log_metrics(self, step, values):
            self.seen.append((step, values["loss"]))

    kept = Kept()
    monkeypatch.setattr(metrics, "open_trackers", lambda *args: [Gone(), kept])
    log = metrics.MetricLog(tmp_path, tiny_recipe())
    log.start(2)
    log.log(1, {"loss": 0.5})
    log.log(2, {"loss": 0.25})
    log.close()
    assert kept.seen == [(1, 0.5), (2, 0.25)]
    assert capsys.readouterr().err.count("mlflow stopped logging (ConnectionError: server closed "
                                         "the connection); metrics.jsonl has every value") == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
