"""A spiral ordering for arvision: the template for third-party plugins.

Copy ``examples/arvision-spiral``, rename the distribution, the package and the entry point, and
replace :class:`SpiralOrdering` with your own component. The three parts every plugin has:

1. a frozen attrs config class whose fields (declared with :func:`arvision.config.setting`) are the
   keys of the component's recipe table; unknown keys are rejected before anything is built;
2. the component itself, implementing one of the interfaces in :mod:`arvision.components` (here
   :class:`~arvision.components.Ordering`, built as ``factory(config, grid)``);
3. a ``register_*`` hook, marked with ``@arvision.hookimpl``, that registers the name recipes use;
   ``pyproject.toml`` points the ``arvision`` entry-point group at this module.

The ordering itself: one token per segment, visited in a clockwise spiral from the top-left corner
inwards (or, with ``inward = false``, the reverse: from the centre outwards). AIM found raster
order better than spiral; this is a worked example, not a recommendation.
"""

import attrs
import torch

import arvision
from arvision.components import Ordering
from arvision.config import setting
from arvision.plan import Plan, SegmentLayout

__all__ = ["SpiralConfig", "SpiralOrdering", "register_orderings", "spiral_order"]


@attrs.frozen
class SpiralConfig:
    """The ``[ordering]`` table of ``name = "spiral"``."""

    inward: bool = setting(True, "true: clockwise from the top-left corner to the centre; "
                           "false: the same path reversed, from the centre outwards")


def spiral_order(height: int, width: int) -> list[int]:
    """Flat row-major indices of a ``height x width`` grid, clockwise from the top-left inwards."""
    top, bottom, left, right = 0, height - 1, 0, width - 1
    order: list[int] = []
    while top <= bottom and left <= right:
        order += [top * width + col for col in range(left, right + 1)]  # top row, left to right
        order += [row * width + right for row in range(top + 1, bottom + 1)]  # right column, down
        if top < bottom:  # bottom row, right to left (unless it is the top row)
            order += [bottom * width + col for col in range(right - 1, left - 1, -1)]
        if left < right:  # left column, up (unless it is the right column)
            order += [row * width + left for row in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return order


class SpiralOrdering(Ordering):
    """One token per segment, visited in a spiral; the same order for every sample."""

    def __init__(self, config: SpiralConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        self.layout = SegmentLayout(*grid)  # one cell per token
        order = spiral_order(*grid)
        self.order = torch.tensor(order if config.inward else order[::-1], dtype=torch.long)  # (S,)

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        """The spiral for each of ``batch_size`` samples; deterministic, so ``generator`` is unused."""
        order = self.order.to(device).repeat(batch_size, 1)  # (B, S)
        return Plan(self.layout, order)


@arvision.hookimpl
def register_orderings(register):
    """Make ``[ordering] name = "spiral"`` available to recipes."""
    register("spiral", SpiralOrdering, SpiralConfig)
