"""The autoregressive model: tokenizer, ordering, encoder, decoders and target in one step.

    images [0,1] --tokenizer--> tokens (B, h', w'[, D]) (+ cls)
           |--ordering.plan--> order (B, S) [+ prefix length (B,)], block-causal mask
           '--encoder(images, plan)--> memory of segments 1..S-1 (+ cls)
    each decoder: prediction --resample to the token grid--> target.loss --> its loss part
                  (with a prefix: mean over the targets past it)
    loss = sum(weight_i x part_i)
"""

from collections.abc import Iterable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import Decoder, Ordering, Prediction, Target, Tokenizer, Tokens, TokenSpec
from ..plan import Plan
from ..seeds import PLAN_STREAM, PREFIX_STREAM, seeded_generator, stream_seed
from ..traceable import traceable
from .attention import AttentionBackend
from .encoder import Encoder
from .recompute import set_recompute

__all__ = ["ARModel", "DecoderRole", "ModelOutput", "resample_segments"]


@traceable
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
    """One training step's computation. The tokenizer is frozen and left out of ``state_dict``.

    ``prefix_attention`` (AIM): every plan gets a prefix length per sample, uniform in
    1..S-1 visible segments, drawn like its order (from the sample's own seed in training).
    """

    def __init__(self, tokenizer: Tokenizer | None, tokens: TokenSpec, ordering: Ordering,
                 encoder: Encoder, decoders: dict[str, tuple[DecoderRole, Decoder]],
                 target: Target, prefix_attention: bool = False) -> None:
        super().__init__()
        # Without a tokenizer (``arvision check``, cached targets) forward needs ``tokens``.
        self.tokenizer = tokenizer.freeze() if tokenizer is not None else None
        if self.tokenizer is not None:
            self.tokenizer.attach(encoder)
        self.tokens = tokens
        self.ordering = ordering
        self.prefix_attention = prefix_attention
        #: How attention layers get the plan's mask: "sdpa" (boolean) or "flex" (a BlockMask);
        #: set from train.attention_backend once the device is known (model.attention).
        self.attention: AttentionBackend = "sdpa"
        self.encoder = encoder
        self.decoders = nn.ModuleDict({key: decoder for key, (_, decoder) in decoders.items()})
        self.roles = {key: role for key, (role, _) in decoders.items()}
        self.target = target
        # The tokenizer is rebuilt from the recipe: checkpoints hold the student only.
        self._register_state_dict_hook(_drop_tokenizer)
        self._register_load_state_dict_pre_hook(self._keep_tokenizer)

    def recompute_in_backward(self, kinds: Iterable[str], blocks: bool = False) -> None:
        """What backward recomputes instead of keeping from forward: ``kinds`` of activations
        (``train.recompute``, :func:`arvision.model.recompute.set_recompute`) and, with
        ``blocks``, whole transformer blocks of the encoder and of every decoder that has
        them (``train.activation_checkpointing``)."""
        self.encoder.grad_checkpointing = blocks
        for decoder in self.decoders.values():
            decoder.grad_checkpointing = blocks
        set_recompute(self, kinds)

    @torch.compiler.disable  # Python loops over per-sample generators: drawn eagerly, then
    # a compiled forward (train.compile = "model") resumes with the plan as its input
    def plan(self, batch: int, order: Tensor | None = None, seeds: Tensor | None = None,
             generator: torch.Generator | None = None, prefix_length: Tensor | None = None
             ) -> Plan:
        """A pinned ``order`` (B, S); else each sample's order drawn from its own seed (``seeds``
        (B,), as training passes them); else ``batch`` orders drawn from ``generator``.

        With prefix attention the prefix lengths are drawn the same way (their own stream of the
        sample's seed), unless pinned by ``prefix_length`` (B,). The plan carries
        :attr:`attention`.
        """
        device = self.encoder.vit.pos_embed.device
        if order is not None:
            plan = Plan(self.ordering.layout, order.to(device))
        elif seeds is not None:
            plan_seeds = [stream_seed(seed, PLAN_STREAM) for seed in seeds.tolist()]
            plan = self.ordering.plan_samples(plan_seeds, device)
        else:
            plan = self.ordering.plan(batch, generator, device)
        prefix = None
        if self.prefix_attention:
            prefix = prefix_length if prefix_length is not None else self.draw_prefix(
                plan.order.shape[0], seeds, generator)
            prefix = prefix.to(device)
        return attrs.evolve(plan, prefix_length=prefix, attention=self.attention)

    def draw_prefix(self, batch: int, seeds: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """Prefix lengths (B,) uniform in 1..S-1: from each sample's seed when given (stream
        :data:`~arvision.seeds.PREFIX_STREAM`), else from ``generator``."""
        high = self.ordering.layout.num_segments  # exclusive: at most the S-1 visible segments
        if seeds is not None:
            return torch.cat([torch.randint(1, high, (1,), generator=seeded_generator(
                stream_seed(seed, PREFIX_STREAM))) for seed in seeds.tolist()])
        device = generator.device if generator is not None else "cpu"
        return torch.randint(1, high, (batch,), generator=generator, device=device)

    def forward(self, images: Tensor, tokens: Tokens | None = None, order: Tensor | None = None,
                seeds: Tensor | None = None, generator: torch.Generator | None = None,
                prefix_length: Tensor | None = None) -> ModelOutput:
        """Images (B, C, H, W) in [0, 1]; optional precomputed tokens; a pinned order (B, S), or
        the samples' seeds (B,) their orders are drawn from (see :meth:`plan`); with prefix
        attention, optionally pinned prefix lengths (B,)."""
        if tokens is None:
            tokens = self.tokenizer(images)
        plan = self.plan(images.shape[0], order, seeds, generator, prefix_length)
        ids = tokens.tokens if self.encoder.token_embed is not None else None
        memory = self.encoder(images, plan, ids)
        parts = {key: self.score(decoder(memory, plan), tokens, plan, self.roles[key].predicts)
                 for key, decoder in self.decoders.items()}
        loss = sum(self.roles[key].weight * part for key, part in parts.items())
        return ModelOutput(loss, parts)

    def score(self, prediction: Prediction, tokens: Tokens, plan: Plan, predicts: str) -> Tensor:
        """Mean loss over every predicted token (and the CLS) of one decoder.

        With a prefix only the target segments past it count, as in AIM's loss; their sum is
        divided by the expected number of such targets (:meth:`expected_scored`), so the result
        is their mean in expectation.
        """
        segments = slice(1, None) if predicts == "next" else slice(None, -1)
        grid = self.tokens.grid
        flat = tokens.tokens.flatten(1, 2)  # (B, h*w[, D])
        target = plan.gather(flat, grid, segments)  # (B, S-1, Tt[, D])
        pred = resample_segments(prediction.tokens, plan.layout.cell(self.encoder.grid),
                                 plan.layout.cell(grid))  # (B, S-1, Tt, out)
        batch, count, per = pred.shape[:3]
        losses = self.target.loss(pred.flatten(0, 2), target.flatten(0, 2))  # (B*(S-1)*Tt,)
        losses = losses.view(batch, count * per)
        scored = plan.scored(segments)  # (B, S-1), or None: every target counts
        if scored is not None:
            losses = losses * scored.repeat_interleave(per, dim=1).to(losses.dtype)
        if prediction.cls is not None:
            cls_losses = self.target.loss(prediction.cls, tokens.cls)  # (B,)
            losses = torch.cat([losses, cls_losses[:, None]], dim=1)
        if scored is None:
            return losses.mean()
        # Divided by the expected count of scored targets, a constant: every scored token weighs
        # the same in any batch, so the loss is the same on any number of ranks.
        count = batch * (per * self.expected_scored(segments) + (prediction.cls is not None))
        return losses.sum() / max(count, 1.0)

    def expected_scored(self, segments: slice) -> float:
        """Mean number of a decoder's target segments past the prefix, over prefix lengths
        uniform in 1..S-1: S/2 for ``next``, S/2 - 1 for ``visible``."""
        num = self.ordering.layout.num_segments
        places = range(num)[segments]  # the targets' places in the order
        lengths = range(1, num)  # the prefix lengths drawn
        return sum(place >= k for k in lengths for place in places) / len(lengths)

    def _keep_tokenizer(self, state: dict, prefix: str, *_args) -> None:
        if self.tokenizer is None:
            return
        for key, value in self.tokenizer.state_dict(prefix=prefix + "tokenizer.").items():
            state.setdefault(key, value)


def _drop_tokenizer(module: nn.Module, state: dict, prefix: str, _local_metadata) -> None:
    for key in [key for key in state if key.startswith(prefix + "tokenizer.")]:
        del state[key]
