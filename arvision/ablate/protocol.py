"""The ablation file's own tables: ``[eval]`` (one protocol for every run) and ``[launcher]``.

Both are frozen attrs classes read by arvision's strict converter: an unknown key or a value of
the wrong type is one line naming the ablation file and the key.
"""

from typing import Any, Literal

import attrs

from ..config import check, make_converter, setting
from .backend import KNN_KS, LINEAR_LRS, LINEAR_WEIGHT_DECAYS, structure_config

__all__ = ["EvalProtocol", "LauncherConfig", "structure_table"]

positive = check(lambda v: v > 0, "a number > 0")
all_positive = check(lambda v: len(v) > 0 and all(x > 0 for x in v), "a non-empty list of numbers > 0")
fraction = check(lambda v: 0 < v < 1, "a number in (0, 1)")


@attrs.frozen
class EvalProtocol:
    """How every run of an ablation (and its baselines) is evaluated (docs/ablations.md)."""

    probes: tuple[Literal["linear", "knn", "attentive"], ...] = setting(
        ("linear", "knn"), "probes on the frozen encoder", validator=check(bool, "at least one probe"))
    blocks: tuple[int, ...] = setting((), "1-based blocks whose features are averaged (default: "
                                      "the middle block of each run's encoder)")
    attention: Literal["bidirectional", "causal", "as_trained"] = setting(
        "as_trained", "how each run's frozen encoder attends while its features are extracted "
        "(eval.attention of a recipe: 'as_trained' follows each variant's own ordering and "
        "prefix attention)")
    limit: int | None = setting(None, "train images for the probes (default: all)",
                                validator=positive)
    eval_limit: int | None = setting(None, "eval images (default: all)", validator=positive)
    heldout: float = setting(0.1, "part of the probe's train images held out to choose its "
                             "hyperparameters", validator=fraction)
    linear_lrs: tuple[float, ...] = setting(LINEAR_LRS, "linear probe learning rates (swept)",
                                            validator=all_positive)
    linear_weight_decays: tuple[float, ...] = setting(LINEAR_WEIGHT_DECAYS,
                                                      "linear probe weight decays (swept)")
    knn_ks: tuple[int, ...] = setting(KNN_KS, "k-NN neighbour counts (swept)",
                                      validator=all_positive)
    knn_temperature: float = setting(0.07, "k-NN vote temperature", validator=positive)
    attentive_lrs: tuple[float, ...] = setting((3e-3, 1e-2, 3e-2), "attentive probe learning "
                                               "rates (swept)", validator=all_positive)
    attentive_epochs: int = setting(10, "attentive probe epochs", validator=positive)
    random_init: bool = setting(True, "evaluate the base recipe's encoder at random init once")
    raw_pixels: bool = setting(True, "evaluate the linear probe and k-NN on raw pixels once")
    raw_pixels_size: int = setting(32, "raw pixels are average-pooled to at most this side",
                                   validator=positive)
    batch_size: int = setting(256, "images per forward pass when extracting features",
                              validator=positive)
    device: str = setting("auto", "'auto', 'cpu', 'cuda' or 'cuda:N' for the probes")


@attrs.frozen
class LauncherConfig:
    """Where runs execute: ``--launcher local`` (subprocesses) or ``slurm`` (submitit jobs)."""

    jobs: int | None = setting(None, "runs at a time (local default 1; slurm default: all)",
                               validator=positive)
    threads: int | None = setting(None, "CPU threads of each run (default: cores // jobs "
                                  "locally, cpus_per_task on Slurm); part of a run's identity",
                                  validator=positive)
    cluster: Literal["slurm", "local"] = setting(
        "slurm", "submitit executor for --launcher slurm; 'local' runs the same jobs as "
        "subprocesses of this machine (tests, a workstation)")
    partition: str | None = setting(None, "Slurm partition")
    nodes: int = setting(1, "nodes per run", validator=positive)
    gpus_per_node: int = setting(1, "GPUs per node; one task (torchrun rank) per GPU",
                                 validator=check(lambda v: v >= 0, "a number >= 0"))
    cpus_per_task: int | None = setting(None, "CPU cores per task", validator=positive)
    mem_gb: float | None = setting(None, "memory per node in GB", validator=positive)
    time_min: int = setting(240, "time limit of each job, in minutes", validator=positive)
    account: str | None = setting(None, "Slurm account")
    qos: str | None = setting(None, "Slurm QOS")
    constraint: str | None = setting(None, "Slurm constraint (node features)")
    setup: tuple[str, ...] = setting((), "shell lines run before each job (module load ...)")
    poll_s: float = setting(30.0, "seconds between polls of the job states", validator=positive)


def structure_table(data: Any, cls: type, source: str) -> Any:
    """``data`` (a TOML table) as ``cls``; errors are one RecipeError line naming ``source``."""
    return structure_config(make_converter(), data, cls, source)
