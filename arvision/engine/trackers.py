"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, MLflow and Weights & Biases, chosen by
the recipe's ``[log] trackers``. Each gets the same three things the same way:

    the resolved recipe     TensorBoard text; MLflow params + recipe.toml artifact; W&B config
    step metrics            loss, loss/<part>, grad_norm, lr, ... at their step
    final results           eval/<probe>/top1, finetune/top1, ... at the last step (W&B: summary)

MLflow and W&B are optional (extras ``arvision[mlflow]``, ``arvision[wandb]``) and imported only
when named. Their run ids are kept in ``OUT/trackers.json``, so a resumed run, and the evaluation
after it, continue the same tracker runs.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import RecipeError
from ..recipe.schema import LogConfig

__all__ = ["TRACKERS", "Tracker", "flatten", "open_trackers"]

IDS_FILE = "trackers.json"
# MLflow reports creating its database tables at INFO, alembic its migrations: nothing to act on.
for _name in ("mlflow.store", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables (and lists of tables, by index) as ``a.b.c`` keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            value = {str(index): item for index, item in enumerate(value)}
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Tracker:
    """One experiment tracker: a run that receives metrics and final results."""

    name = ""
    run_id: str | None = None  # kept in trackers.json to continue the same run
    where = ""  # where the run is, for one line when it starts ('' for TensorBoard: OUT/tensorboard)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def log_results(self, step: int, values: dict[str, float]) -> None:
        self.log_metrics(step, values)

    def close(self, ok: bool = True) -> None:
        """End the run (marked failed unless ``ok``)."""


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, out_dir: Path, config: LogConfig, recipe: dict[str, Any], run_id: str | None
                 ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        text = "\n".join(f"    {line}" for line in tomli_w.dumps(recipe).splitlines())
        self.writer.add_text("recipe", text)  # indented: Markdown shows it as code

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self, ok: bool = True) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, out_dir: Path, config: LogConfig, recipe: dict[str, Any], run_id: str | None
                 ) -> None:
        mlflow = _require("mlflow", "mlflow")
        from mlflow.entities import Param

        self.client = mlflow.MlflowClient(tracking_uri=config.mlflow_uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(config.project)
            experiment_id = experiment.experiment_id if experiment is not None else \
                self.client.create_experiment(config.project, _artifacts(self.client))
            run = self.client.create_run(experiment_id, run_name=recipe["run"]["name"],
                                         tags={"arvision.out_dir": str(out_dir.resolve())})
            run_id = run.info.run_id
            params = [Param(key, str(value)[:6000]) for key, value in flatten(recipe).items()]
            for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
                self.client.log_batch(run_id, params=params[start:start + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.client.log_text(run_id, tomli_w.dumps(recipe), "recipe.toml")
        self.where = f"MLflow run {run_id} in {self.client.tracking_uri} (experiment {config.project})"

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step)
                                                    for key, value in values.items()])

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, out_dir: Path, config: LogConfig, recipe: dict[str, Any], run_id: str | None
                 ) -> None:
        wandb = _require("wandb", "wandb")
        self.run = wandb.init(
            project=config.project, name=recipe["run"]["name"], id=run_id, resume="allow",
            dir=str(out_dir), mode=None if config.wandb_mode == "auto" else config.wandb_mode,
            config=None if run_id else recipe,
            settings=wandb.Settings(silent=True))
        if run_id is not None:
            self.run.config.update(recipe, allow_val_change=True)
        self.run_id = self.run.id
        self.where = f"W&B run {self.run.url}" if not self.run.offline else (
            f"W&B run {self.run.id} kept offline in {self.run.dir.removesuffix('/files')}; upload "
            "it with `wandb sync` on that folder")

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_results(self, step: int, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)


TRACKERS: dict[str, Callable[..., Tracker]] = {
    "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def open_trackers(config: LogConfig, out_dir: Path, recipe: dict[str, Any]) -> list[Tracker]:
    """Start (or continue, by the ids in ``OUT/trackers.json``) a run in each configured tracker."""
    path = out_dir / IDS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    trackers: list[Tracker] = []
    try:
        for name in config.trackers:
            trackers.append(_open(name, config, out_dir, recipe, saved.get(name)))
    except BaseException:
        for tracker in trackers:
            tracker.close(ok=False)
        raise
    ids = {tracker.name: tracker.run_id for tracker in trackers if tracker.run_id}
    if ids and ids != {key: saved.get(key) for key in ids}:
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps({**saved, **ids}, indent=2) + "\n")
        os.replace(partial, path)
    return trackers


def _open(name: str, config: LogConfig, out_dir: Path, recipe: dict[str, Any],
          run_id: str | None) -> Tracker:
    try:
        return TRACKERS[name](out_dir, config, recipe, run_id)
    except RecipeError:
        raise
    except Exception as exc:  # a store or service that cannot be reached, a bad URI, no login
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RecipeError(f"log.trackers: {name} could not start a run ({type(exc).__name__}: "
                          f"{first})") from None


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise RecipeError(f"log.trackers: {module!r} needs the {module} package; install it with "
                          f"pip install 'arvision[{extra}]'") from None


def _artifacts(client: Any) -> str | None:
    """Where a new experiment keeps artifacts: beside an SQLite store's database (mlartifacts/),
    else the store's default."""
    uri = client.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
