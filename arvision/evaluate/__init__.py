"""Evaluation of a pretrained encoder on frozen features: linear probe, k-NN, attentive probe.

``run_probes(checkpoint, probes=("linear", "knn"))`` rebuilds the checkpoint's model, extracts
features once (cached under the run directory), runs the probes and merges the results into
``eval.json``. docs/evaluation.md describes each protocol.
"""

from .attentive import AttentiveProbe, attentive_probe
from .features import Features, LoadedEncoder, default_blocks, extract_features, load_encoder
from .probes import LINEAR_LRS, LINEAR_WEIGHT_DECAYS, knn_probe, linear_probe, topk_accuracy, whiten
from .runner import PROBES, read_results, run_probes, write_results

__all__ = [
    "LINEAR_LRS", "LINEAR_WEIGHT_DECAYS", "PROBES", "AttentiveProbe", "Features", "LoadedEncoder",
    "attentive_probe", "default_blocks", "extract_features", "knn_probe", "linear_probe",
    "load_encoder", "read_results", "run_probes", "topk_accuracy", "whiten", "write_results",
]
