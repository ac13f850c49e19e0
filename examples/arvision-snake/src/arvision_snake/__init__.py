"""A snake ordering for arvision: the template for third-party plugins.

Copy ``examples/arvision-snake``, rename the distribution, the package and the entry point, and
replace :class:`SnakeOrdering` with your own component. The three parts every plugin has:

1. a frozen attrs config class whose fields (declared with :func:`arvision.config.setting`) are the
   keys of the component's recipe table; unknown keys are rejected before anything is built;
2. the component itself, implementing one of the interfaces in :mod:`arvision.components` (here
   :class:`~arvision.components.Ordering`, built as ``factory(config, grid)``);
3. a ``register_*`` hook, marked with ``@arvision.hookimpl``, that registers the name recipes use;
   ``pyproject.toml`` points the ``arvision`` entry-point group at this module.

The ordering itself: one token per segment, visited row by row, each row in the direction
opposite to the one before (boustrophedon), so consecutive tokens are always neighbours; with
``columns = true``, column by column. A worked example, not a recommendation: arvision's built-in
orderings (raster, spiral, checkerboard, ...) are those the papers ablate.
"""

import attrs
import torch

import arvision
from arvision.components import Ordering
from arvision.config import setting
from arvision.plan import Plan, SegmentLayout

__all__ = ["SnakeConfig", "SnakeOrdering", "register_orderings", "snake_order"]


@attrs.frozen
class SnakeConfig:
    """The ``[ordering]`` table of ``name = "snake"``."""

    columns: bool = setting(False, "false: row by row, alternating left-to-right and "
                            "right-to-left; true: column by column, alternating down and up")


def snake_order(height: int, width: int, columns: bool = False) -> list[int]:
    """Flat row-major indices of a ``height x width`` grid in snake order."""
    if columns:
        return [row * width + col for col in range(width)
                for row in (range(height) if col % 2 == 0 else range(height - 1, -1, -1))]
    return [row * width + col for row in range(height)
            for col in (range(width) if row % 2 == 0 else range(width - 1, -1, -1))]


class SnakeOrdering(Ordering):
    """One token per segment, visited in a snake; the same order for every sample."""

    def __init__(self, config: SnakeConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        self.layout = SegmentLayout(*grid)  # one cell per token
        self.order = torch.tensor(snake_order(*grid, columns=config.columns),
                                  dtype=torch.long)  # (S,)

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        """The snake for each of ``batch_size`` samples; deterministic, so ``generator`` is unused."""
        order = self.order.to(device).repeat(batch_size, 1)  # (B, S)
        return Plan(self.layout, order)


@arvision.hookimpl
def register_orderings(register):
    """Make ``[ordering] name = "snake"`` available to recipes."""
    register("snake", SnakeOrdering, SnakeConfig)
