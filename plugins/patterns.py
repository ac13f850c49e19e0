"""Fixed orders of a grid of segments, as AIM and ml-l3m ablate, and ARM's clusters.

Each order is one permutation of the ``rows x cols`` segments (by default one token each), the
same for every sample, so the plan draws nothing and the whole batch shares it. Checked against
ml-l3m's ``src/l3m/helpers/vision/ar_patterns.py`` (the patterns of AIM's ablation); the tests
pin the sequences it gives:

- ``spiral``: ml-l3m walks inward from the top-left corner down the first column
  (counter-clockwise: down, right, up, left) and reverses the walk, so the order starts at the
  centre and ends at the top-left corner. ``outward = false`` keeps the inward walk.
- ``checkerboard``: the cells whose row + column is even, in raster order, then the odd ones in
  raster order (ml-l3m's mask ``[::2, ::2] | [1::2, 1::2]`` first).
- ``reverse_raster``: raster order reversed, from the bottom-right corner.
- ``fixed_random``: one permutation for every image. ml-l3m ships a hard-coded table for 196 and
  256 patches; here it is drawn from ``seed``, so any grid has one (a different permutation).
- ``clusters`` (ARM): ``size x size`` groups of tokens visited in raster order. It is the
  ``segments`` layout given by the cluster's size instead of the number of segments: on a 14x14
  grid, ``clusters`` with ``size = 7`` and ``segments`` with ``rows = cols = 2`` are the same.
"""

import attrs
import torch

from arvision.components import Ordering
from arvision.config import positive, setting
from arvision.plan import Plan, SegmentLayout

__all__ = ["CheckerboardOrdering", "ClustersConfig", "ClustersOrdering", "FixedOrderConfig",
           "FixedOrdering", "FixedRandomConfig", "FixedRandomOrdering", "ReverseRasterOrdering",
           "SpiralConfig", "SpiralOrdering", "checkerboard_order", "spiral_order"]


def spiral_order(rows: int, cols: int) -> list[int]:
    """Row-major indices of a ``rows x cols`` grid walked inward from the top-left corner:
    down the left column, right along the bottom row, up the right column, left along the top."""
    top, bottom, left, right = 0, rows - 1, 0, cols - 1
    order: list[int] = []
    while top <= bottom and left <= right:
        order += [row * cols + left for row in range(top, bottom + 1)]
        order += [bottom * cols + col for col in range(left + 1, right + 1)]
        if left < right:
            order += [row * cols + right for row in range(bottom - 1, top - 1, -1)]
        if top < bottom:
            order += [top * cols + col for col in range(right - 1, left, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return order


def checkerboard_order(rows: int, cols: int) -> list[int]:
    """Row-major indices: cells with an even row + column first, then the odd ones, each in
    raster order."""
    return sorted(range(rows * cols), key=lambda i: ((i // cols + i % cols) % 2, i))


@attrs.frozen
class FixedOrderConfig:
    """The segments a fixed order visits: one token each unless ``rows`` and ``cols`` say."""

    rows: int | None = setting(None, "segments per column (default: one per token row, so one "
                               "token per segment); set with cols", validator=positive)
    cols: int | None = setting(None, "segments per row (default: one per token column)",
                               validator=positive)


def layout_of(config: FixedOrderConfig, grid: tuple[int, int]) -> SegmentLayout:
    """The layout a fixed-order config asks for on ``grid``; a ValueError names the bad key."""
    if (config.rows is None) != (config.cols is None):
        missing = "cols" if config.cols is None else "rows"
        raise ValueError(f"ordering.{missing}: set rows and cols together, or neither (one token per "
                         "segment)")
    layout = SegmentLayout(*grid) if config.rows is None else SegmentLayout(config.rows,
                                                                            config.cols)
    layout.cell(grid)  # a ValueError here names both sizes
    if layout.num_segments < 2:
        raise ValueError("needs at least 2 segments: one to see and one to predict")
    return layout


class FixedOrdering(Ordering):
    """One permutation of the segments (``sequence``, (S,)) for every sample."""

    def __init__(self, config: FixedOrderConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        self.layout = layout_of(config, grid)
        self.sequence = torch.tensor(self.order_of(self.layout.rows, self.layout.cols),
                                     dtype=torch.long)  # (S,)

    def order_of(self, rows: int, cols: int) -> list[int]:
        raise NotImplementedError

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        """The same order for each of ``batch_size`` samples; ``generator`` is unused."""
        return Plan(self.layout, self.sequence.to(device).expand(batch_size, -1))

    def plan_samples(self, seeds, device=None) -> Plan:
        return self.plan(len(seeds), None, device)


@attrs.frozen
class SpiralConfig(FixedOrderConfig):
    outward: bool = setting(True, "true: from the centre out to the top-left corner (ml-l3m, "
                            "AIM's ablation); false: the same path reversed, inward")


class SpiralOrdering(FixedOrdering):
    """A spiral from the centre outwards (AIM's ablation, ml-l3m's ``spiral``)."""

    def order_of(self, rows: int, cols: int) -> list[int]:
        inward = spiral_order(rows, cols)
        return inward[::-1] if self.config.outward else inward


class CheckerboardOrdering(FixedOrdering):
    """The black squares of a checkerboard in raster order, then the white ones (ml-l3m)."""

    def order_of(self, rows: int, cols: int) -> list[int]:
        return checkerboard_order(rows, cols)


class ReverseRasterOrdering(FixedOrdering):
    """Raster order reversed: from the bottom-right corner, right to left, bottom to top."""

    def order_of(self, rows: int, cols: int) -> list[int]:
        return list(range(rows * cols))[::-1]


@attrs.frozen
class FixedRandomConfig(FixedOrderConfig):
    seed: int = setting(0, "seed of the one permutation every image shares")


class FixedRandomOrdering(FixedOrdering):
    """One random permutation drawn from ``seed``, the same for every image (ml-l3m).

    ml-l3m's ``fixed_random`` is a table for 196 and 256 patches; this one exists for any grid.
    """

    def order_of(self, rows: int, cols: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed)
        return torch.randperm(rows * cols, generator=generator).tolist()


@attrs.frozen
class ClustersConfig:
    size: int = setting(4, "tokens per cluster side: clusters of size x size tokens (ARM: 4)",
                        validator=positive)


class ClustersOrdering(Ordering):
    """ARM's clusters: ``size x size`` tokens per segment, visited in raster order.

    The ``segments`` layout given by the cluster's size instead of the number of segments.
    """

    def __init__(self, config: ClustersConfig, grid: tuple[int, int]) -> None:
        super().__init__(config, grid)
        if grid[0] % config.size or grid[1] % config.size:
            raise ValueError(f"ordering.size: {config.size}x{config.size} clusters do not tile the "
                             f"{grid[0]}x{grid[1]} token grid")
        self.layout = SegmentLayout(grid[0] // config.size, grid[1] // config.size)
        if self.layout.num_segments < 2:
            raise ValueError(f"ordering.size: one {config.size}x{config.size} cluster covers the "
                             f"{grid[0]}x{grid[1]} grid; needs at least 2 to see one and predict "
                             "the next")

    def plan(self, batch_size, generator=None, device=None) -> Plan:
        order = torch.arange(self.layout.num_segments, device=device)  # (S,)
        return Plan(self.layout, order.expand(batch_size, -1))

    def plan_samples(self, seeds, device=None) -> Plan:
        return self.plan(len(seeds), None, device)
