"""The autoregressive model: tokenizer, ordering, encoder, decoders and target in one step.

    images [0,1] --tokenizer--> tokens (B, h', w'[, D]) (+ cls)
           |--ordering.plan--> order (B, S), block-causal mask
           '--encoder(images, plan)--> memory of segments 1..S-1 (+ cls)
    each decoder: prediction --resample to the token grid--> target.loss --> its loss part
    loss = sum(weight_i x part_i)
"""

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import Decoder, Ordering, Prediction, Target, Tokenizer, Tokens, TokenSpec
from ..plan import Plan
from ..seeds import PLAN_STREAM, stream_seed
from .encoder import Encoder

__all__ = ["ARModel", "DecoderRole", "ModelOutput", "resample_segments"]


@attrs.frozen
class ModelOutput:
    """What a model's forward returns to the engine: the loss, its parts (logged as ``loss/KEY``)
    and other values to log beside them (``metrics``: logged under their own keys, not in the loss;
    e.g. a VQ tokenizer's codebook usage). Parts and metrics are averaged over micro-batches and
    ranks like the loss."""

    loss: Tensor  # scalar: the weighted sum
    parts: dict[str, Tensor]  # each decoder's loss by its key
    metrics: dict[str, Tensor | float] = attrs.field(factory=dict)


@attrs.frozen
class DecoderRole:
    """What one decoder's predictions are scored against, and how much its loss counts."""

    predicts: str  # "next": segments 2..S; "visible": segments 1..S-1
    weight: float


def resample_segments(pred: Tensor, cell: tuple[int, int], target_cell: tuple[int, int]) -> Tensor:
    """Predictions per segment (B, S', ch*cw, D) -> (B, S', th*tw, D), bilinear within each cell."""
    if cell == target_cell:
        return pred
    batch, segments, _, dim = pred.shape
    x = pred.reshape(batch * segments, *cell, dim).permute(0, 3, 1, 2)  # (B*S', D, ch, cw)
    x = F.interpolate(x.float(), size=target_cell, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(batch, segments, -1, dim).to(pred.dtype)


class ARModel(nn.Module):
    """One training step's computation. The tokenizer is frozen and left out of ``state_dict``."""

    def __init__(self, tokenizer: Tokenizer | None, tokens: TokenSpec, ordering: Ordering,
                 encoder: Encoder, decoders: dict[str, tuple[DecoderRole, Decoder]],
                 target: Target) -> None:
        super().__init__()
        # Without a tokenizer (``arvision check``, cached targets) forward needs ``tokens``.
        self.tokenizer = tokenizer.freeze() if tokenizer is not None else None
        self.tokens = tokens
        self.ordering = ordering
        self.encoder = encoder
        self.decoders = nn.ModuleDict({key: decoder for key, (_, decoder) in decoders.items()})
        self.roles = {key: role for key, (role, _) in decoders.items()}
        self.target = target
        # The tokenizer is rebuilt from the recipe: checkpoints hold the student only.
        self._register_state_dict_hook(_drop_tokenizer)
        self._register_load_state_dict_pre_hook(self._keep_tokenizer)

    def plan(self, batch: int, order: Tensor | None = None, seeds: Tensor | None = None,
             generator: torch.Generator | None = None) -> Plan:
        """A pinned ``order`` (B, S); else each sample's order drawn from its own seed (``seeds``
        (B,), as training passes them); else ``batch`` orders drawn from ``generator``."""
        device = self.encoder.vit.pos_embed.device
        if order is not None:
            return Plan(self.ordering.layout, order.to(device))
        if seeds is not None:
            plan_seeds = [stream_seed(seed, PLAN_STREAM) for seed in seeds.tolist()]
            return self.ordering.plan_samples(plan_seeds, device)
        return self.ordering.plan(batch, generator, device)

    def forward(self, images: Tensor, tokens: Tokens | None = None, order: Tensor | None = None,
                seeds: Tensor | None = None, generator: torch.Generator | None = None
                ) -> ModelOutput:
        """Images (B, C, H, W) in [0, 1]; optional precomputed tokens; a pinned order (B, S), or
        the samples' seeds (B,) their orders are drawn from (see :meth:`plan`)."""
        if tokens is None:
            tokens = self.tokenizer(images)
        plan = self.plan(images.shape[0], order, seeds, generator)
        ids = tokens.tokens if self.encoder.token_embed is not None else None
        memory = self.encoder(images, plan, ids)
        parts = {key: self.score(decoder(memory, plan), tokens, plan, self.roles[key].predicts)
                 for key, decoder in self.decoders.items()}
        loss = sum(self.roles[key].weight * part for key, part in parts.items())
        return ModelOutput(loss, parts)

    def score(self, prediction: Prediction, tokens: Tokens, plan: Plan, predicts: str) -> Tensor:
        """Mean loss over every predicted token (and the CLS) of one decoder."""
        segments = slice(1, None) if predicts == "next" else slice(None, -1)
        grid = self.tokens.grid
        flat = tokens.tokens.flatten(1, 2)  # (B, h*w[, D])
        target = plan.gather(flat, grid, segments)  # (B, S-1, Tt[, D])
        pred = resample_segments(prediction.tokens, plan.layout.cell(self.encoder.grid),
                                 plan.layout.cell(grid))  # (B, S-1, Tt, out)
        losses = self.target.loss(pred.flatten(0, 2), target.flatten(0, 2))  # (B*(S-1)*Tt,)
        if prediction.cls is not None:
            cls_losses = self.target.loss(prediction.cls, tokens.cls)  # (B,)
            losses = torch.cat([losses.view(pred.shape[0], -1), cls_losses[:, None]], dim=1)
        return losses.mean()


    def _keep_tokenizer(self, state: dict, prefix: str, *_args) -> None:
        if self.tokenizer is None:
            return
        for key, value in self.tokenizer.state_dict(prefix=prefix + "tokenizer.").items():
            state.setdefault(key, value)


def _drop_tokenizer(module: nn.Module, state: dict, prefix: str, _local_metadata) -> None:
    for key in [key for key in state if key.startswith(prefix + "tokenizer.")]:
        del state[key]
