"""From an expanded ablation to checked runs, each with its identity and directory.

    identity  = sha256 of {recipe: the resolved recipe less the keys that do not change results,
                           threads: the CPU threads it computes with,
                           world: the processes it trains on (Slurm: nodes x GPUs per node),
                           precision: train.precision as it resolves here ('auto')}
    directory = OUT/runs/<variant>-<axes>-seed<k>-<identity[:8]>
    finished  = result.json there, written after evaluation, with this identity and protocol

Every recipe is validated and built on the meta device (as ``arvision check``) before anything
runs; the first problem is one RecipeError line naming the ablation file, the variant and the key.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import attrs

from . import backend
from .files import read_json
from .spec import Ablation

__all__ = ["NEUTRAL_KEYS", "Plan", "PlannedRun", "identity", "make_plan", "slug"]

#: Recipe keys that name, log or place a run but do not change what it computes.
NEUTRAL_KEYS = ("run", "eval", "train.log_every", "train.checkpoint_every",
                "train.keep_checkpoints", "data.num_workers")
PROTOCOL_VERSION = 1  # bump when the evaluation code changes what a protocol measures
#: A fine-tuning ablation's protocol: each run scores its own classifier as its recipe says
#: (finetune.eval_limit and eval_crop are recipe keys, so part of the run's identity).
FINETUNE_PROTOCOL = {"probes": ["finetune"], "random_init": False, "raw_pixels": False}


@attrs.frozen
class PlannedRun:
    """One run (or the baselines job) as the launcher starts it and the report reads it."""

    kind: str  # 'pretrain', 'finetune' or 'baselines'
    label: str
    variant: str
    axes: tuple[tuple[str, str], ...]
    seed: int
    source: str  # what errors and logs call this run's recipe
    record: dict[str, Any] = attrs.field(eq=False, repr=False)  # the resolved recipe, plain data
    identity: str
    directory: Path
    costs: dict[str, Any] = attrs.field(eq=False)  # parameters, FLOPs per image, batch, steps

    @property
    def name(self) -> str:
        return self.directory.name

    def result(self) -> dict[str, Any] | None:
        return read_json(self.directory / "result.json")


@attrs.frozen
class Plan:
    ablation: Ablation
    out: Path
    runs: tuple[PlannedRun, ...]
    baselines: PlannedRun | None
    protocol: dict[str, Any]  # EvalProtocol as plain data
    protocol_id: str
    threads: int
    world: int

    def finished(self, run: PlannedRun) -> bool:
        """Trained and evaluated with this identity and this protocol."""
        result = run.result()
        return result is not None and result.get("identity") == run.identity and \
            result.get("protocol_id") == self.protocol_id

    @property
    def all_runs(self) -> list[PlannedRun]:
        return ([self.baselines] if self.baselines else []) + list(self.runs)


def _without(data: dict[str, Any], keys: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    kept = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in keys:
            continue
        kept[key] = _without(value, keys, f"{dotted}.") if isinstance(value, dict) else value
    return kept


def identity(record: dict[str, Any], threads: int, world: int = 1) -> str:
    """sha256 (hex) of what determines a run's results: its recipe, threads, processes and the
    precision it trains in here (``train.precision = "auto"`` depends on the machine)."""
    core = {"recipe": _without(record, NEUTRAL_KEYS), "threads": threads, "world": world,
            "precision": backend.precision_here(record)}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()


def slug(text: str, limit: int = 80) -> str:
    """``text`` as a file name part: runs of other characters become '_'."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_")[:limit] or "run"


def _costs(record: dict[str, Any], described: dict[str, Any]) -> dict[str, Any]:
    train = record.get("train", {})
    return {**described, "batch_size": train.get("batch_size"),
            "steps": train.get("steps") or described.get("steps")}


def make_plan(ablation: Ablation, out: Path, threads: int, world: int = 1) -> Plan:
    """Validate and build every run's recipe; name and key each run (nothing is written).

    ``threads``: CPU threads of each run; ``world``: processes each run trains on.
    """
    path = ablation.path
    described: dict[str, dict[str, Any]] = {}
    runs = []
    for spec in ablation.runs:
        source = f"{path}: variant {spec.label}"
        recipe = backend.validate(spec.data, source)
        if spec.label not in described:  # parameters and FLOPs do not depend on the seed
            described[spec.label] = backend.describe(recipe, source)
        record = backend.canonical(recipe)
        key = identity(record, threads, world)
        name = slug(f"{spec.label.replace(' ', '-')}-seed{spec.seed}") + f"-{key[:8]}"
        record["run"] = {**record.get("run", {}), "name": name}
        runs.append(PlannedRun(ablation.kind, spec.label, spec.variant, spec.axes, spec.seed, source,
                               record, key, out / "runs" / name,
                               _costs(record, described[spec.label])))
    protocol = FINETUNE_PROTOCOL if ablation.kind == "finetune" else \
        json.loads(json.dumps(attrs.asdict(ablation.config.eval)))  # tuples -> lists
    protocol_id = hashlib.sha256(json.dumps([PROTOCOL_VERSION, protocol], sort_keys=True)
                                 .encode()).hexdigest()[:16]
    baselines = None
    if protocol["random_init"] or protocol["raw_pixels"]:
        source = f"{path}: base"
        record = backend.canonical(backend.validate(ablation.baseline_data, source))
        key = identity(record, threads, world)
        record["run"] = {**record.get("run", {}), "name": "baselines"}
        baselines = PlannedRun("baselines", "baselines", "baselines", (), record["train"]["seed"],
                               source, record, key, out / "baselines" / key[:8], {})
    return Plan(ablation, out, tuple(runs), baselines, protocol, protocol_id, threads, world)
