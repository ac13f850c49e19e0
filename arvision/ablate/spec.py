"""The ablation file: a base recipe, overrides, a grid of axes, named variants and seeds.

    base = "../quickstart.toml"        # relative to the ablation file
    seeds = [0, 1]                     # every variant runs once per seed (train.seed)
    [set]        "train.steps" = 300   # for every variant; dotted keys, typed TOML values
    [axes]       "ordering.name" = ["raster", "random"]      # a cartesian grid
    [[variants]] name = "two-decoders"  set = { decoders = [...] }   # variants x grid
                 unset = ["finetune.checkpoint"]   # keys removed: back to their defaults
    [[claims]]   text = "..."  better = "two-decoders"  worse = "base"   # tested by the report
    [eval] ...   [launcher] ...        # protocol.py

A run's recipe is, in this order: the base file, ``[set]``, its variant's ``set`` and ``unset``,
its axis values, the command line's ``--set``, then ``train.seed``. A value replaces what is at its
dotted key, a whole table or array of tables included.
"""

import copy
import itertools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from ..config import FieldError, check, setting
from ..errors import RecipeError
from .backend import apply_override, is_finetune, read_base
from .protocol import EvalProtocol, LauncherConfig, structure_table

__all__ = ["Ablation", "AblationFile", "ClaimTable", "RunSpec", "VariantTable", "load_ablation", "set_path"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def _check_axes(_instance: Any, _attribute: attrs.Attribute, axes: dict[str, Any]) -> None:
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise FieldError(f"axes.{json.dumps(key)}", f"expected a non-empty list of values, "
                             f"got {values!r}")


def _check_seeds(_instance: Any, _attribute: attrs.Attribute, seeds: tuple[int, ...]) -> None:
    if not seeds or len(set(seeds)) != len(seeds):
        raise FieldError("seeds", f"expected a non-empty list of distinct seeds, got {list(seeds)}")


@attrs.frozen
class VariantTable:
    """One ``[[variants]]`` entry."""

    name: str = setting(help="the variant's name (letters, digits, '_', '.', '+', '-')",
                        validator=check(NAME.fullmatch, "a name of letters, digits, _ . + -"))
    set: dict[str, Any] = setting(attrs.Factory(dict), "recipe keys this variant changes")
    unset: tuple[str, ...] = setting((), "dotted recipe keys this variant removes (back to their "
                                     "defaults: TOML has no null), after its set")


@attrs.frozen
class ClaimTable:
    """One ``[[claims]]`` entry: a published claim that one variant scores above another."""

    text: str = setting(help="the claim, in the words of its source")
    better: str = setting(help="the variant label the claim says scores higher")
    worse: str = setting(help="the variant label the claim says scores lower")
    metrics: tuple[str, ...] = setting(("linear_top1",), "the accuracies that decide it "
                                       "(probe_top1 of the [eval] probes)")
    source: str = setting("", "where the claim is made (paper, table)")


@attrs.frozen
class AblationFile:
    """The tables of an ablation file, as written (not yet expanded)."""

    base: str = setting(help="the recipe every variant starts from, relative to this file")
    seeds: tuple[int, ...] = setting((0,), "every variant runs once per seed (train.seed)",
                                     validator=_check_seeds)
    set: dict[str, Any] = setting(attrs.Factory(dict), "recipe keys changed for every variant")
    axes: dict[str, Any] = setting(attrs.Factory(dict), "a grid: recipe key -> list of values",
                                   validator=_check_axes)
    variants: tuple[VariantTable, ...] = setting((), "named variants (combined with the grid)")
    reference: str | None = setting(None, "the variant label differences are measured against "
                                    "(default: the first)")
    eval: EvalProtocol = setting(attrs.Factory(EvalProtocol), "the evaluation protocol")
    claims: tuple[ClaimTable, ...] = setting((), "claims the report tests: better vs worse, paired "
                                             "by seed")
    launcher: LauncherConfig = setting(attrs.Factory(LauncherConfig), "where runs execute")


@attrs.frozen
class RunSpec:
    """One run of the grid: a variant, its axis values and a seed, with its recipe tables."""

    variant: str
    axes: tuple[tuple[str, str], ...]  # (recipe key, the value as shown)
    seed: int
    data: dict[str, Any] = attrs.field(eq=False, repr=False)  # the recipe tables, unvalidated

    @property
    def label(self) -> str:
        """The variant and its axis values: what the report groups seeds by."""
        return " ".join([self.variant, *(f"{key}={value}" for key, value in self.axes)])


@attrs.frozen
class Ablation:
    """An ablation file, read and expanded into its runs (recipes not yet validated)."""

    path: Path
    config: AblationFile
    base_path: Path
    runs: tuple[RunSpec, ...]
    baseline_data: dict[str, Any] = attrs.field(eq=False, repr=False)  # base + [set] + --set

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(run.label for run in self.runs))

    @property
    def reference(self) -> str:
        return self.config.reference or self.labels[0]

    @property
    def kind(self) -> str:
        """'finetune' when the base recipe has a ``[finetune]`` table (each run fine-tunes a
        classifier and is scored by its top-1), else 'pretrain' (each run is probed)."""
        return "finetune" if is_finetune(self.baseline_data) else "pretrain"

    @property
    def accuracies(self) -> list[str]:
        """The accuracies every run reports (what claims may name)."""
        if self.kind == "finetune":
            return ["finetune_top1"]
        return [f"{probe}_top1" for probe in self.config.eval.probes]


def set_path(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set the dotted recipe ``key`` to ``value`` (a copy), as ``--set`` does: missing tables are
    created, list items are addressed by index; a bad path is one RecipeError naming ``where``."""
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise RecipeError(f"{where}: {key!r}: expected a dotted recipe key like train.steps")
    node: Any = data
    for depth, part in enumerate(parts):
        here, last = ".".join(parts[:depth + 1]), depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{where}: {here}: expected an index below {len(node)}")
            if last:
                node[int(part)] = copy.deepcopy(value)
                return
            child = node[int(part)]
        else:
            if last:
                node[part] = copy.deepcopy(value)
                return
            child = node.setdefault(part, {})
        if not isinstance(child, dict | list):
            raise RecipeError(f"{where}: {here} is a value, not a table")
        node = child


def unset_path(data: dict[str, Any], key: str, where: str) -> None:
    """Remove the dotted recipe ``key`` (a table's key, not a list item); a key the recipe does
    not have is one RecipeError naming ``where``."""
    parent, _, name = key.rpartition(".")
    node: Any = data
    for part in parent.split(".") if parent else ():
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or name not in node:
        raise RecipeError(f"{where}: {key}: not in the recipe (nothing to remove)")
    del node[name]


def _shown(values: list[Any], value: Any) -> str:
    """An axis value as labels show it: scalars as written, tables and lists by position (#1)."""
    if isinstance(value, dict | list):
        return f"#{values.index(value) + 1}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def read_ablation_file(path: Path) -> AblationFile:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: ablation file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: expected an ablation file, found a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    config = structure_table(data, AblationFile, str(path))
    names = [variant.name for variant in config.variants]
    for name in names:
        if names.count(name) > 1:
            raise RecipeError(f"{path}: variants: two variants are named {name!r}")
    return config


def load_ablation(path: str | Path, overrides: list[str] = ()) -> Ablation:
    """Read an ablation file and expand it: variants x axis values x seeds, in file order."""
    path = Path(path)
    config = read_ablation_file(path)
    base_path = (path.parent / config.base).resolve()
    try:
        base = read_base(base_path)
    except RecipeError as exc:
        raise RecipeError(f"{path}: base: {exc}") from None
    common = copy.deepcopy(base)
    for key, value in config.set.items():
        set_path(common, key, value, f"{path}: set")
    variants = config.variants or (VariantTable(name="base"),)
    grid = list(itertools.product(*config.axes.values()))
    runs = []
    for variant, values in itertools.product(variants, grid):
        data = copy.deepcopy(common)
        for key, value in variant.set.items():
            set_path(data, key, value, f"{path}: variant {variant.name}: set")
        for key in variant.unset:
            unset_path(data, key, f"{path}: variant {variant.name}: unset")
        axes = []
        for key, value in zip(config.axes, values, strict=True):
            set_path(data, key, value, f"{path}: axes")
            axes.append((key, _shown(config.axes[key], value)))
        label = " ".join([variant.name, *(f"{k}={v}" for k, v in axes)])
        _apply_overrides(data, overrides, f"{path}: variant {label}")
        for seed in config.seeds:
            runs.append(RunSpec(variant.name, tuple(axes), seed, _finish(data, seed, str(path))))
    baseline = copy.deepcopy(common)
    _apply_overrides(baseline, overrides, f"{path}")
    ablation = Ablation(path, config, base_path, tuple(runs), _finish(baseline, config.seeds[0], str(path)))
    labels = f"(labels: {', '.join(map(repr, ablation.labels))})"
    if config.reference is not None and config.reference not in ablation.labels:
        raise RecipeError(f"{path}: reference: {config.reference!r} is not a variant label {labels}")
    _check_kind(ablation)
    accuracies = ablation.accuracies
    for number, claim in enumerate(config.claims):
        for key in ("better", "worse"):
            if getattr(claim, key) not in ablation.labels:
                raise RecipeError(f"{path}: claims.{number}.{key}: {getattr(claim, key)!r} is not "
                                  f"a variant label {labels}")
        for metric in claim.metrics:
            if metric not in accuracies:
                raise RecipeError(f"{path}: claims.{number}.metrics: {metric!r} is not measured "
                                  f"(expected one of: {', '.join(accuracies)})")
    return ablation


def _check_kind(ablation: Ablation) -> None:
    """Every run of one kind; a fine-tuning ablation scores its runs itself (no [eval] table)."""
    path, kind = ablation.path, ablation.kind
    for run in ablation.runs:
        if is_finetune(run.data) != (kind == "finetune"):
            expected = "a [finetune] table" if kind == "finetune" else "no [finetune] table"
            raise RecipeError(f"{path}: variant {run.label}: expected {expected}, as the base "
                              f"recipe has: one ablation compares runs of one kind")
    if kind == "finetune" and ablation.config.eval != EvalProtocol():
        raise RecipeError(f"{path}: eval: a fine-tuning ablation scores each classifier on "
                          "data.eval_split (finetune.eval_limit, finetune.eval_crop); remove [eval]")


def _apply_overrides(data: dict[str, Any], overrides: list[str], where: str) -> None:
    for assignment in overrides:
        try:
            apply_override(data, assignment)
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None


def _finish(data: dict[str, Any], seed: int, where: str) -> dict[str, Any]:
    """A copy with ``train.seed`` set; the recipe's own [eval] and run.out_dir are dropped (the
    ablation's protocol evaluates, and runs live in the ablation's output directory)."""
    data = copy.deepcopy(data)
    set_path(data, "train.seed", seed, f"{where}: seeds")
    data.pop("eval", None)
    if isinstance(data.get("run"), dict):
        data["run"].pop("out_dir", None)
    return data
