"""Autocast precision: ``train.precision`` ('auto', 'bf16', 'fp16', 'fp32') resolved for a device,
and the autocast context every forward (training, teachers, feature extraction) runs under."""

import contextlib
import functools

import torch

__all__ = ["AUTOCAST_DTYPES", "autocast", "fast_bf16", "planned_precision", "precision_label",
           "resolve_precision"]

#: a resolved ``train.precision`` -> the autocast dtype (fp32: no autocast)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@functools.cache
def fast_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 matmuls natively: a CUDA GPU that supports bf16, a
    CPU with AVX512-BF16 or AMX (oneDNN's own test). Elsewhere bf16 autocast is emulated: on an
    AVX2 CPU a training step of the quickstart took 20 s in bf16 against 0.65 s in fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` as it runs on ``device``: 'auto' is bf16 where the device computes it natively
    (:func:`fast_bf16`), else fp16 on CUDA (with a gradient scaler) and fp32 elsewhere."""
    if precision != "auto":
        return precision
    device_type = torch.device(device).type
    if fast_bf16(device_type):
        return "bf16"
    return "fp16" if device_type == "cuda" else "fp32"


def planned_precision(precision: str, device_name: str = "auto") -> str:
    """``precision`` resolved for the device that ``train.device = device_name`` picks here."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" \
        else device_name
    return resolve_precision(precision, device)


def precision_label(precision: str, device_name: str = "auto") -> str:
    """What a run with ``train.precision = precision`` trains in on this machine: 'fp32', or
    'fp32 (auto)' when the recipe leaves the choice to the device."""
    resolved = planned_precision(precision, device_name)
    return f"{resolved} (auto)" if precision == "auto" else resolved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``precision`` ('bf16', 'fp16'; 'auto' resolved for ``device``), or
    nothing for 'fp32'."""
    dtype = AUTOCAST_DTYPES[resolve_precision(precision, device)]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
