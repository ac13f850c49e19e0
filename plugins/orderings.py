"""Built-in orderings."""

import attrs
import torch

from arvision import hookimpl
from arvision.components import Ordering
from arvision.plan import Plan, SegmentLayout

__all__ = ["RasterConfig", "RasterOrdering"]


@attrs.frozen
class RasterConfig:
    """Raster order has no options."""


class RasterOrdering(Ordering):
    """One token per segment, row by row: the order of iGPT and AIM."""

    def __init__(self, config: RasterConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        self.layout = SegmentLayout(*grid)

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        order = torch.arange(self.layout.num_segments, device=device)  # (S,)
        return Plan(self.layout, order.expand(batch_size, -1))


@hookimpl
def register_orderings(register):
    register("raster", RasterOrdering, RasterConfig)
