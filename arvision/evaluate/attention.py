"""How a probe lets the frozen encoder attend while its features are extracted (``eval.attention``).

- ``bidirectional``: no mask, every token sees every token (AIM and D-iGPT evaluate so; AIM's
  prefix attention trains the encoder for it).
- ``causal``: the block-causal mask of a raster plan over the recipe's segment layout (one token
  per segment for ``raster``): a token sees its segment and the segments before it in raster
  order, as iGPT probed its transformer.
- ``as_trained``: bidirectional for an encoder pretrained with prefix attention; otherwise
  block-causal in the recipe's own order (for a random ordering, one order drawn with seed 0: any
  order is one the encoder was trained on).

An encoder pretrained only block-causally meets, under full attention, inputs it never saw;
reading it causally keeps it on its training distribution (docs/evaluation.md measures both).
"""

from typing import Literal

import attrs
import torch
from torch import Tensor

from ..components import Ordering
from ..plan import Plan, SegmentLayout
from ..seeds import seeded_generator

__all__ = ["ATTENTION_MODES", "ProbeAttention", "probe_attention"]

Mode = Literal["bidirectional", "causal", "as_trained"]
ATTENTION_MODES: tuple[str, ...] = ("bidirectional", "causal", "as_trained")


@attrs.frozen
class ProbeAttention:
    """A resolved attention mode: ``mode`` is 'bidirectional' or 'causal' (then ``order`` of the
    ``layout``'s segments); ``requested`` is what was asked for."""

    requested: str
    mode: str
    layout: SegmentLayout | None = None
    order: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        """What identifies the features this mode gives (part of the feature cache's key)."""
        if self.mode == "bidirectional":
            return "bidirectional"
        return f"causal:{self.layout.rows}x{self.layout.cols}:{list(self.order)}"

    def mask(self, grid: tuple[int, int], cls: bool, device: torch.device | str | None = None
             ) -> Tensor | None:
        """The encoder's attention mask over CLS + every token of ``grid`` in natural order:
        (1, 1, P+N, P+N), or None for bidirectional attention."""
        if self.mode == "bidirectional":
            return None
        plan = Plan(self.layout, torch.tensor([self.order], dtype=torch.long, device=device))
        return plan.natural_mask(grid, cls)


def probe_attention(requested: str, ordering: Ordering, prefix_attention: bool) -> ProbeAttention:
    """Resolve ``requested`` for an encoder trained with ``ordering`` (and ``prefix_attention``)."""
    if requested not in ATTENTION_MODES:
        raise ValueError(f"unknown attention {requested!r}; expected one of "
                         f"{', '.join(ATTENTION_MODES)}")
    layout = ordering.layout
    if requested == "bidirectional" or (requested == "as_trained" and prefix_attention):
        return ProbeAttention(requested, "bidirectional")
    if requested == "causal":
        order = tuple(range(layout.num_segments))
    else:
        order = tuple(ordering.plan(1, seeded_generator(0), "cpu").order[0].tolist())
    return ProbeAttention(requested, "causal", layout, order)
