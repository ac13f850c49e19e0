"""Segments, prediction orders and the block-causal mask they imply.

An image grid (h, w) is cut into ``rows x cols`` cells (segments). A plan orders the segments per
sample; tokens are gathered segment after segment in that order, so the mask over the gathered
sequence is the same for every sample: a token attends to its own segment and earlier ones. The
last segment in the order is never an encoder input: the encoder reads segments 1..S-1.

With prefix attention (AIM) a plan also holds a prefix length K per sample: its first K visible
segments attend to each other bidirectionally, the rest stay block-causal, and only targets past
the prefix are scored. The mask is then one per sample, (B, 1, L, L).

Attention layers get the mask as a boolean tensor (SDPA) or, with ``Plan.attention = "flex"``, as
a flex attention ``BlockMask`` built from the same rule (:func:`flex_block_mask`).
"""

from typing import Literal

import attrs
import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from .traceable import traceable

__all__ = ["Plan", "SegmentLayout", "block_causal_mask", "flex_block_mask", "prefix_causal_mask"]


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


def prefix_causal_mask(num_segments: int, tokens_per_segment: int, cls: bool,
                       prefix_length: Tensor) -> Tensor:
    """Boolean (B, 1, L, L) mask, True = attend: :func:`block_causal_mask`, and besides every
    token sees the first ``prefix_length[b]`` segments of sample b (AIM's prefix attention).

    Within the prefix attention is bidirectional; after it, block-causal. CLS keeps its rule (it
    sees everything and only the last segment sees it), so no prefix token learns from later
    segments through it.
    """
    device = prefix_length.device
    shared = block_causal_mask(num_segments, tokens_per_segment, cls, device)  # (P+L, P+L)
    segment = torch.arange(num_segments, device=device).repeat_interleave(tokens_per_segment)
    in_prefix = segment[None, :] < prefix_length[:, None]  # (B, L): keys inside the prefix
    if cls:
        in_prefix = torch.cat([torch.zeros_like(in_prefix[:, :1]), in_prefix], dim=1)  # (B, P+L)
    return (shared[None] | in_prefix[:, None, :])[:, None]  # (B, 1, P+L, P+L)


def flex_block_mask(num_segments: int, tokens_per_segment: int, cls: bool,
                    prefix_length: Tensor | None = None, device=None) -> BlockMask:
    """:func:`block_causal_mask` (or with ``prefix_length`` (B,), :func:`prefix_causal_mask`) as
    a flex attention ``BlockMask`` over [CLS +] L queries and keys: one for the batch, or one
    per sample (B) with a prefix.

    Each position carries its segment's index, CLS that of the last segment: it then sees every
    token, and only the last segment sees it, as in the boolean mask.
    """
    device = torch.device(device or "cpu")
    segment = torch.arange(num_segments, device=device).repeat_interleave(tokens_per_segment)
    if cls:
        segment = torch.cat([segment.new_full((1,), num_segments - 1), segment])  # (1 + L,)
    first = int(cls)  # the first position that is an image token

    def block_causal(_b: Tensor, _h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return segment[k] <= segment[q]

    def prefix_causal(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        in_prefix = (segment[k] < prefix_length[b]) & (k >= first)
        return block_causal(b, h, q, k) | in_prefix

    length = segment.shape[0]
    if prefix_length is None:
        return create_block_mask(block_causal, None, None, length, length, device=device)
    return create_block_mask(prefix_causal, prefix_length.shape[0], None, length, length,
                             device=device)


@traceable
@attrs.frozen
class Plan:
    """A per-sample order of a layout's segments: ``order[b, k]`` is the k-th segment of sample b.

    ``prefix_length`` (B,), when set, is AIM's prefix: sample b reads its first
    ``prefix_length[b]`` visible segments bidirectionally (1..S-1; 1 is plain block-causal).
    ``attention`` is how :meth:`attention_mask` hands the mask to attention layers: a boolean
    tensor ("sdpa") or a flex attention ``BlockMask`` ("flex").
    """

    layout: SegmentLayout
    order: Tensor = attrs.field()  # (B, S) long
    prefix_length: Tensor | None = attrs.field(default=None, kw_only=True)  # (B,) long
    attention: Literal["sdpa", "flex"] = attrs.field(default="sdpa", kw_only=True)

    @order.validator
    def _check_order(self, _attribute, order: Tensor) -> None:
        if order.dim() != 2 or order.shape[1] != self.layout.num_segments:
            raise ValueError(
                f"plan order must be (batch, {self.layout.num_segments}) for a "
                f"{self.layout.rows}x{self.layout.cols} layout, got {tuple(order.shape)}"
            )

    @prefix_length.validator
    def _check_prefix(self, _attribute, prefix: Tensor | None) -> None:
        if prefix is None:
            return
        if prefix.shape != self.order.shape[:1]:
            raise ValueError(f"plan prefix_length must be (batch,) = ({self.order.shape[0]},), "
                             f"got {tuple(prefix.shape)}")
        # Checked on the CPU only (no device sync) and not while compiling (data-dependent).
        checkable = prefix.device.type == "cpu" and not torch.compiler.is_compiling()
        if checkable and prefix.numel() and not (
                (prefix >= 1) & (prefix <= self.num_segments - 1)).all():
            raise ValueError(f"plan prefix_length must be in 1..{self.num_segments - 1} (the "
                             f"visible segments), got {int(prefix.min())}..{int(prefix.max())}")

    @property
    def num_segments(self) -> int:
        return self.layout.num_segments

    def to(self, device) -> "Plan":
        prefix = None if self.prefix_length is None else self.prefix_length.to(device)
        return Plan(self.layout, self.order.to(device), prefix_length=prefix,
                    attention=self.attention)

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
        """Block-causal mask over the encoder's input: segments 1..S-1 (plus CLS); one (L, L) for
        the batch, or with a prefix one per sample (B, 1, L, L)."""
        if self.prefix_length is not None:
            return prefix_causal_mask(self.num_segments - 1, tokens_per_segment, cls,
                                      self.prefix_length.to(self.order.device))
        return block_causal_mask(self.num_segments - 1, tokens_per_segment, cls, self.order.device)

    def attention_mask(self, tokens_per_segment: int, cls: bool) -> Tensor | BlockMask:
        """:meth:`mask` as the attention layers take it: the boolean tensor, or with
        ``attention = "flex"`` the same rule as a ``BlockMask`` (:func:`flex_block_mask`)."""
        if self.attention == "sdpa":
            return self.mask(tokens_per_segment, cls)
        prefix = None if self.prefix_length is None else self.prefix_length.to(self.order.device)
        return flex_block_mask(self.num_segments - 1, tokens_per_segment, cls, prefix,
                               self.order.device)

    def scored(self, segments: slice) -> Tensor | None:
        """Which of the ordered ``segments`` (a decoder's targets) count in the loss: (B, S')
        bool, False for those inside the prefix; None without a prefix (all count).

        For ``next`` (targets 2..S) the prediction made at the prefix's last segment counts: it
        saw only the prefix, and its target lies past it.
        """
        if self.prefix_length is None:
            return None
        index = torch.arange(self.num_segments, device=self.order.device)[segments]  # (S',)
        return index[None, :] >= self.prefix_length.to(self.order.device)[:, None]

    def natural_mask(self, grid: tuple[int, int], cls: bool) -> Tensor:
        """Block-causal mask over every token of ``grid`` in natural (row-major) order, all S
        segments included: token i sees token j when j's segment comes no later than i's in
        this plan's order. (B, 1, P+N, P+N); with CLS first, seen only by the last segment.

        Probes read an encoder this way when it should attend as it was trained.
        """
        table = self.layout.segment_positions(grid, device=self.order.device)  # (S, T)
        segment_of = torch.empty(grid[0] * grid[1], dtype=torch.long, device=self.order.device)
        segment_of[table.flatten()] = torch.arange(
            self.num_segments, device=self.order.device).repeat_interleave(table.shape[1])
        rank = self.order.argsort(dim=1)[:, segment_of]  # (B, N): place of each token's segment
        mask = rank[:, None, :] <= rank[:, :, None]  # (B, N, N)
        if cls:
            sees_cls = rank == self.num_segments - 1  # (B, N)
            body = torch.cat([sees_cls[:, :, None], mask], dim=2)  # (B, N, 1 + N)
            top = torch.ones_like(body[:, :1])  # (B, 1, 1 + N)
            mask = torch.cat([top, body], dim=1)  # (B, 1 + N, 1 + N)
        return mask[:, None]
