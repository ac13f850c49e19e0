"""Built-in orderings: raster (iGPT, AIM), fixed and random segment orders (D-iGPT), random tokens,
and the fixed orders of AIM's ablation and ARM's clusters (:mod:`.patterns`)."""

import attrs
import torch

from arvision import hookimpl
from arvision.components import Ordering
from arvision.config import positive, setting
from arvision.plan import Plan, SegmentLayout

from .patterns import (
    CheckerboardOrdering,
    ClustersConfig,
    ClustersOrdering,
    FixedOrderConfig,
    FixedRandomConfig,
    FixedRandomOrdering,
    ReverseRasterOrdering,
    SpiralConfig,
    SpiralOrdering,
)

__all__ = ["RandomOrdering", "RandomSegmentsOrdering", "RasterOrdering", "SegmentOrdering",
           "SegmentsConfig", "SegmentsOrdering", "TokenOrderConfig", "TokenOrdering",
           "same_for_every_sample"]


def in_order(layout: SegmentLayout, batch_size: int, device) -> Plan:
    """Every sample visits the segments in raster order: order (B, S)."""
    order = torch.arange(layout.num_segments, device=device)  # (S,)
    return Plan(layout, order.expand(batch_size, -1))


def shuffled(layout: SegmentLayout, batch_size: int, generator: torch.Generator | None,
             device) -> Plan:
    """An independent uniform permutation per sample: order (B, S)."""
    gen_device = generator.device if generator is not None else "cpu"
    keys = torch.rand(batch_size, layout.num_segments, generator=generator, device=gen_device)
    return Plan(layout, keys.argsort(dim=1).to(device))


def same_for_every_sample(ordering: Ordering, seeds, device=None) -> Plan:
    """``plan_samples`` of an ordering that draws nothing: one plan for the whole batch."""
    return ordering.plan(len(seeds), None, device)


@attrs.frozen
class TokenOrderConfig:
    """One token per segment; no options."""


class TokenOrdering(Ordering):
    """One token per segment."""

    def __init__(self, config: TokenOrderConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        self.layout = SegmentLayout(*grid)


class RasterOrdering(TokenOrdering):
    """One token per segment, row by row: the order of iGPT and AIM."""

    plan_samples = same_for_every_sample

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        return in_order(self.layout, batch_size, device)


class RandomOrdering(TokenOrdering):
    """One token per segment, in a random order per sample (a per-token permutation)."""

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        return shuffled(self.layout, batch_size, generator, device)


@attrs.frozen
class SegmentsConfig:
    rows: int = setting(2, "segments per column of the image", validator=positive)
    cols: int = setting(2, "segments per row of the image", validator=positive)


class SegmentOrdering(Ordering):
    """``rows x cols`` equal segments."""

    def __init__(self, config: SegmentsConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        self.layout = SegmentLayout(config.rows, config.cols)
        self.layout.cell(grid)  # a ValueError here names both sizes
        if self.layout.num_segments < 2:
            raise ValueError("needs at least 2 segments: one to see and one to predict")


class SegmentsOrdering(SegmentOrdering):
    """``rows x cols`` equal segments visited in raster order."""

    plan_samples = same_for_every_sample

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        return in_order(self.layout, batch_size, device)


class RandomSegmentsOrdering(SegmentOrdering):
    """``rows x cols`` equal segments in a random permutation per sample (D-iGPT: 2x2)."""

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        return shuffled(self.layout, batch_size, generator, device)


@hookimpl
def register_orderings(register):
    register("raster", RasterOrdering, TokenOrderConfig)
    register("random", RandomOrdering, TokenOrderConfig)
    register("segments", SegmentsOrdering, SegmentsConfig)
    register("random_segments", RandomSegmentsOrdering, SegmentsConfig)
    register("spiral", SpiralOrdering, SpiralConfig)
    register("checkerboard", CheckerboardOrdering, FixedOrderConfig)
    register("reverse_raster", ReverseRasterOrdering, FixedOrderConfig)
    register("fixed_random", FixedRandomOrdering, FixedRandomConfig)
    register("clusters", ClustersOrdering, ClustersConfig)
