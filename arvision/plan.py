"""Segments, prediction orders and the block-causal mask they imply.

An image grid (h, w) is cut into ``rows x cols`` cells (segments). A plan orders the segments per
sample; tokens are gathered segment after segment in that order, so the mask over the gathered
sequence is the same for every sample: a token attends to its own segment and earlier ones. The
last segment in the order is never an encoder input: the encoder reads segments 1..S-1.
"""

import attrs
import torch
from torch import Tensor

__all__ = ["Plan", "SegmentLayout", "block_causal_mask"]


@attrs.frozen
class SegmentLayout:
    """A partition of any grid that ``rows x cols`` divides evenly into equal cells."""

    rows: int
    cols: int

    @property
    def num_segments(self) -> int:
        return self.rows * self.cols

    def divides(self, grid: tuple[int, int]) -> bool:
        return grid[0] % self.rows == 0 and grid[1] % self.cols == 0

    def cell(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Cell size (ch, cw) on ``grid``; a grid the layout does not divide is a ValueError."""
        if not self.divides(grid):
            raise ValueError(
                f"a {grid[0]}x{grid[1]} grid cannot be split into {self.rows}x{self.cols} equal segments"
            )
        return grid[0] // self.rows, grid[1] // self.cols

    def tokens_per_segment(self, grid: tuple[int, int]) -> int:
        ch, cw = self.cell(grid)
        return ch * cw

    def segment_positions(self, grid: tuple[int, int], device=None) -> Tensor:
        """Flat (row-major) grid index of every token of every segment: (S, T), cells raster-ordered."""
        ch, cw = self.cell(grid)
        index = torch.arange(grid[0] * grid[1], device=device).view(grid)  # (h, w)
        cells = index.view(self.rows, ch, self.cols, cw).permute(0, 2, 1, 3)  # (rows, cols, ch, cw)
        return cells.reshape(self.num_segments, ch * cw)


def block_causal_mask(num_segments: int, tokens_per_segment: int, cls: bool,
                      device=None) -> Tensor:
    """Boolean (L, L) mask, True = attend, for ``num_segments`` gathered segments.

    A token sees its own segment and earlier ones. With ``cls``, position 0 is a CLS token that
    sees everything and is seen only by the last segment (which sees everything anyway), so no
    earlier token learns from later ones through it.
    """
    segment = torch.arange(num_segments, device=device).repeat_interleave(tokens_per_segment)
    mask = segment[None, :] <= segment[:, None]  # (L, L)
    if not cls:
        return mask
    sees_cls = torch.cat([torch.ones(1, dtype=torch.bool, device=device),
                          segment == num_segments - 1])  # (1 + L,)
    top = torch.ones(1, mask.shape[1] + 1, dtype=torch.bool, device=device)
    body = torch.cat([sees_cls[1:, None], mask], dim=1)
    return torch.cat([top, body], dim=0)  # (1 + L, 1 + L)


@attrs.frozen
class Plan:
    """A per-sample order of a layout's segments: ``order[b, k]`` is the k-th segment of sample b."""

    layout: SegmentLayout
    order: Tensor = attrs.field()  # (B, S) long

    @order.validator
    def _check_order(self, _attribute, order: Tensor) -> None:
        if order.dim() != 2 or order.shape[1] != self.layout.num_segments:
            raise ValueError(
                f"plan order must be (batch, {self.layout.num_segments}) for a "
                f"{self.layout.rows}x{self.layout.cols} layout, got {tuple(order.shape)}"
            )

    @property
    def num_segments(self) -> int:
        return self.layout.num_segments

    def to(self, device) -> "Plan":
        return Plan(self.layout, self.order.to(device))

    def positions(self, grid: tuple[int, int], segments: slice = slice(None)) -> Tensor:
        """Grid indices of the tokens of the ordered segments: (B, S', T)."""
        table = self.layout.segment_positions(grid, device=self.order.device)  # (S, T)
        return table[self.order[:, segments]]

    def gather(self, tokens: Tensor, grid: tuple[int, int], segments: slice = slice(None)) -> Tensor:
        """Tokens (B, h*w, ...) -> the ordered segments' tokens (B, S', T, ...)."""
        index = self.positions(grid, segments)  # (B, S', T)
        batch, count, per = index.shape
        flat = index.reshape(batch, count * per)
        picked = tokens[torch.arange(batch, device=tokens.device)[:, None], flat]
        return picked.view(batch, count, per, *tokens.shape[2:])

    def mask(self, tokens_per_segment: int, cls: bool) -> Tensor:
        """Block-causal mask over the encoder's input: segments 1..S-1 (plus CLS)."""
        return block_causal_mask(self.num_segments - 1, tokens_per_segment, cls, self.order.device)
