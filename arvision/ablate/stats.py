"""Means over seeds with 95% bootstrap confidence intervals (percentile bootstrap, as rliable).

With n seeds the bootstrap resamples the n values with replacement; its interval is the 2.5 and
97.5 percentiles of the resampled means. With 2 or 3 seeds it is narrow (it cannot be wider than
the values' range): read it as the spread of the seeds, not as a guarantee. Differences to the
reference variant are paired by seed (the same seed on both sides), which removes the part of
the variation the seed explains for both.
"""

import attrs
import numpy as np

__all__ = ["Estimate", "estimate", "paired_difference"]

RESAMPLES = 10_000
LEVEL = 0.95


@attrs.frozen
class Estimate:
    """A mean with its 95% interval (``low``/``high`` None with fewer than 2 values)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def show(self, digits: int = 2) -> str:
        """``84.12 [83.90, 84.35]``, or the mean alone for one value."""
        if self.low is None or self.high is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict[str, float | int | None]:
        return attrs.asdict(self)


def estimate(values: list[float], seed: int = 0) -> Estimate | None:
    """Mean of ``values`` with a seeded percentile-bootstrap 95% interval; None for no values."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if data.size == 0:
        return None
    mean = float(data.mean())
    if data.size < 2:
        return Estimate(mean, None, None, 1)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(RESAMPLES, data.size))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(mean, float(low), float(high), int(data.size))


def paired_difference(values: dict[int, float], reference: dict[int, float], seed: int = 0
                      ) -> Estimate | None:
    """``values - reference`` over the seeds both have (seed -> value), with its interval."""
    common = sorted(set(values) & set(reference))
    differences = [values[s] - reference[s] for s in common
                   if values[s] is not None and reference[s] is not None]
    return estimate(differences, seed)
