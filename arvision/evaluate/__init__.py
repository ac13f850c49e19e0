"""Evaluation of a pretrained encoder on frozen features: linear probe, k-NN, attentive probe.

``run_probes(checkpoint, probes=("linear", "knn"))`` rebuilds the checkpoint's model, extracts
features once (cached under the run directory), runs the probes and merges the results into
``eval.json``. docs/evaluation.md describes each protocol.
"""

from .attentive import AttentiveProbe, attentive_probe
from .baselines import PIXEL_PROBES, pixel_features, random_init_encoder, raw_pixel_probes
from .features import Features, LoadedEncoder, default_blocks, extract_features, load_encoder
from .probes import (
    KNN_KS,
    LINEAR_LRS,
    LINEAR_WEIGHT_DECAYS,
    heldout_split,
    knn_probe,
    linear_probe,
    topk_accuracy,
    whiten,
)
from .runner import PROBES, check_probes, probe_encoder, read_results, run_probes, write_results

__all__ = [
    "KNN_KS", "LINEAR_LRS", "LINEAR_WEIGHT_DECAYS", "PIXEL_PROBES", "PROBES", "AttentiveProbe",
    "Features", "LoadedEncoder", "attentive_probe", "check_probes", "default_blocks",
    "extract_features", "heldout_split", "knn_probe", "linear_probe", "load_encoder",
    "pixel_features", "probe_encoder", "random_init_encoder", "raw_pixel_probes", "read_results",
    "run_probes", "topk_accuracy", "whiten", "write_results",
]
