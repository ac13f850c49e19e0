"""Seeds as pure functions of integers, so every random draw of a run is reproducible.

A run's random choices per sample (its crop and flip, the view of a target cache, its segment
order, its prefix length) are drawn from generators seeded by ``(run seed, epoch, index)`` and a
stream number per kind of draw, never from a generator shared by a batch, a worker or a rank. A
sample therefore looks and is ordered the same whichever batch it lands in, whichever worker loads
it and however many processes train, and a resumed run sees exactly the draws of the
uninterrupted one.
"""

import torch

__all__ = ["PLAN_STREAM", "PREFIX_STREAM", "sample_seed", "seeded_generator", "stream_seed"]

_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1

#: The stream of a sample's segment order (stream 0 is its view: crop, flip, cached view).
PLAN_STREAM = 1
#: The stream of a sample's prefix length (AIM's prefix attention).
PREFIX_STREAM = 2


def _mix(value: int, parts: tuple[int, ...]) -> int:
    for part in parts:
        value = ((value ^ part) * _MIX + part + 1) & _MASK64
        value ^= value >> 31
    return value & _MASK63


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed determined by (seed, epoch, index): the sample's view stream."""
    return _mix(seed, (epoch, index))


def stream_seed(sample: int, stream: int) -> int:
    """The seed of another kind of draw for the sample whose :func:`sample_seed` is ``sample``."""
    return _mix(sample, (stream,))


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
