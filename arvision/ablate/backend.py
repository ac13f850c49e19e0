"""The ablation runner's one door into arvision: recipes, checks, training and evaluation.

Every other module of ``arvision.ablate`` reaches the engine through these functions (and the
public ``arvision.config`` / ``arvision.errors``), so a move of the engine's modules changes
only this file.
"""

import contextlib
import io
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch

from ..build import resolve
from ..engine import fit
from ..errors import ArvisionError, RecipeError
from ..evaluate import (
    KNN_KS,
    LINEAR_LRS,
    LINEAR_WEIGHT_DECAYS,
    PROBES,
    probe_encoder,
    random_init_encoder,
    raw_pixel_probes,
    run_probes,
)
from ..finetune import FinetuneRecipe, build_finetuner, is_finetune, structure_finetune_recipe
from ..finetune import finetune as run_finetune
from ..finetune.summary import summarize_finetune
from ..plugins import get_plugins
from ..precision import planned_precision
from ..pretrain import train
from ..recipe import (
    Recipe,
    apply_override,
    read_recipe_data,
    recipe_to_dict,
    structure_config,
    structure_recipe,
)
from ..summary import summarize

__all__ = ["KNN_KS", "LINEAR_LRS", "LINEAR_WEIGHT_DECAYS", "PROBES", "Recipe", "apply_override",
           "canonical", "describe", "evaluate_baselines", "evaluate_checkpoint", "finetune",
           "is_finetune", "pretrain", "read_base", "set_threads", "structure_config",
           "threads_in_use", "time_steps", "validate"]

read_base = read_recipe_data  # a recipe file's tables, ``--set`` overrides applied


def validate(data: dict[str, Any], source: str) -> Recipe | FinetuneRecipe:
    """The recipe tables as a Recipe (a FinetuneRecipe with a ``[finetune]`` table), or one
    RecipeError line naming ``source`` and the key."""
    if is_finetune(data):
        return structure_finetune_recipe(data, source)
    return structure_recipe(data, source, get_plugins())


def canonical(recipe: Recipe | FinetuneRecipe) -> dict[str, Any]:
    """The recipe as plain data (what ``recipe.toml`` and checkpoints hold)."""
    return recipe_to_dict(recipe)


def precision_here(record: dict[str, Any]) -> str:
    """The precision a run of this recipe (as plain data) trains in on this machine."""
    train = record.get("train", {})
    return planned_precision(train.get("precision", "auto"), train.get("device", "auto"))


def describe(recipe: Recipe | FinetuneRecipe, source: str) -> dict[str, Any]:
    """Build the recipe on the meta device (as ``arvision check``): parameters and FLOPs per image.

    A recipe that cannot build is one RecipeError line naming ``source``.
    """
    try:
        if isinstance(recipe, FinetuneRecipe):
            summary = summarize_finetune(recipe, source)
        else:
            summary = summarize(resolve(recipe, source), with_memory=False)
    except ArvisionError:
        raise
    except Exception as exc:  # a component failing inside its forward on the meta device
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(f"{source}: cannot build the model: {message}") from None
    flops = summary["flops_per_image"]
    parameters = summary["parameters"]
    return {"parameters": parameters["total"] if isinstance(parameters, dict) else parameters,
            "flops_forward": flops["forward"], "flops_train_step": flops["train_step"],
            **({"steps": summary["steps"]} if "steps" in summary else {})}


def pretrain(recipe: Recipe, out_dir: Path, source: str) -> tuple[bool, int, Path]:
    """Train (or resume, or find finished) the run in ``out_dir``: (main rank, steps, checkpoint)."""
    result = train(recipe, out_dir, source=source)
    return result.main, result.steps, result.checkpoint


def finetune(recipe: FinetuneRecipe, out_dir: Path, source: str
             ) -> tuple[bool, int, dict[str, Any] | None]:
    """Fine-tune (or resume, or find finished) the run in ``out_dir``, then score the classifier on
    ``data.eval_split``: (main rank, steps, its ``eval.json`` entry; None off rank 0)."""
    result = run_finetune(recipe, out_dir, source=source)
    return result.train.main, result.train.steps, result.scores


def _probe_options(protocol: dict[str, Any]) -> dict[str, Any]:
    return {"blocks": protocol["blocks"] or None, "limit": protocol["limit"],
            "eval_limit": protocol["eval_limit"], "knn_ks": protocol["knn_ks"],
            "temperature": protocol["knn_temperature"], "linear_lrs": protocol["linear_lrs"],
            "linear_weight_decays": protocol["linear_weight_decays"],
            "attentive_lrs": protocol["attentive_lrs"],
            "attentive_epochs": protocol["attentive_epochs"], "heldout": protocol["heldout"],
            "batch_size": protocol["batch_size"], "device": protocol["device"],
            "attention": protocol["attention"]}


def evaluate_checkpoint(checkpoint: Path, protocol: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The protocol's probes on the trained encoder (``eval.json`` beside it): {probe: result}."""
    return run_probes(checkpoint, protocol["probes"], **_probe_options(protocol))


def evaluate_baselines(recipe: Recipe, protocol: dict[str, Any], run_dir: Path, source: str
                       ) -> dict[str, dict[str, Any]]:
    """{'random_init': {probe: result}, 'raw_pixels': {probe: result}} as the protocol asks."""
    results: dict[str, dict[str, Any]] = {}
    if protocol["random_init"]:
        loaded = random_init_encoder(recipe, source)
        results["random_init"] = probe_encoder(loaded, protocol["probes"], run_dir,
                                               **_probe_options(protocol))
    if protocol["raw_pixels"]:
        results["raw_pixels"] = raw_pixel_probes(
            recipe, protocol["probes"], limit=protocol["limit"], eval_limit=protocol["eval_limit"],
            max_side=protocol["raw_pixels_size"], source=source, knn_ks=protocol["knn_ks"],
            linear_lrs=protocol["linear_lrs"],
            linear_weight_decays=protocol["linear_weight_decays"],
            temperature=protocol["knn_temperature"], heldout=protocol["heldout"])
    return results


def time_steps(recipe: Recipe | FinetuneRecipe, steps: int = 4) -> float:
    """Median seconds per optimiser step over steps 2..``steps`` of a throwaway run of the recipe
    (the first step, with its warm-up, is left out)."""
    short = attrs.evolve(recipe, train=attrs.evolve(recipe.train, steps=steps, log_every=1,
                                                    checkpoint_every=None))
    with tempfile.TemporaryDirectory(prefix="arvision-timing-") as tmp, \
            contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        if isinstance(short, FinetuneRecipe):  # train only: scoring is not part of a step
            fit(build_finetuner(short, Path(tmp), source="timing")[0])
        else:
            train(short, Path(tmp), source="timing")
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    times = [record["step_time"] for record in records if record["step"] > 1]
    return statistics.median(times or [records[-1]["step_time"]])


def set_threads(threads: int) -> None:
    """Intra-op threads of this process (interop threads cannot change once work has run)."""
    torch.set_num_threads(threads)


def threads_in_use() -> int:
    """The intra-op threads this process computes with."""
    return torch.get_num_threads()
