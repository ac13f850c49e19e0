"""The four component interfaces and the facts passed to their factories.

Every factory takes the component's validated config (an instance of the attrs class it
registered) first, then what it needs to know about the rest of the model:

========== ================================= ==========================================
kind       factory call                      returns
========== ================================= ==========================================
tokenizer  ``factory(config, image)``        :class:`Tokenizer` (frozen nn.Module)
ordering   ``factory(config, grid)``         :class:`Ordering`
decoder    ``factory(config, context)``      :class:`Decoder` (nn.Module)
target     ``factory(config, spec)``         :class:`Target`
========== ================================= ==========================================
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from .plan import Plan, SegmentLayout
from .seeds import seeded_generator
from .traceable import traceable

__all__ = [
    "Decoder", "DecoderContext", "EncoderOutput", "ImageSpec", "Ordering", "Prediction", "Target",
    "TokenSpec", "Tokenizer", "Tokens",
]

Role = Literal["next", "visible"]


@attrs.frozen
class ImageSpec:
    """The student's input: square ``size`` pixels, ``channels`` channels in [0, 1], cut into
    ``patch_size`` patches; ``encoder_dim`` is the student's token width (known when the
    recipe is resolved; a tokenizer whose tokens are the student's own embeddings needs it)."""

    size: int
    channels: int
    patch_size: int
    encoder_dim: int | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return self.size // self.patch_size, self.size // self.patch_size


@attrs.frozen
class TokenSpec:
    """What a tokenizer produces: ids (``discrete``, ``dim`` = vocabulary) or ``dim``-d features."""

    grid: tuple[int, int]
    dim: int
    discrete: bool
    cls: bool = False  # also a (B, dim) CLS target

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@traceable
@attrs.frozen
class Tokens:
    """Target tokens for a batch: ids (B, h, w) long or features (B, h, w, D); optional CLS (B, D)."""

    tokens: Tensor
    cls: Tensor | None = None

    def to(self, device) -> "Tokens":
        cls = None if self.cls is None else self.cls.to(device, non_blocking=True)
        return Tokens(self.tokens.to(device, non_blocking=True), cls)


class Tokenizer(nn.Module, ABC):
    """Images (B, C, H, W) in [0, 1] -> :class:`Tokens`. Frozen: no grad, always in eval mode.

    A tokenizer owns its input resolution and normalisation. ``token_spec`` must answer without
    building anything (no weights, no downloads) so that recipes can be checked cheaply.
    """

    #: Whether the tokenizer reads the EMA of the student's encoder (see :meth:`attach`); a run
    #: without ``train.ema`` is then a recipe error.
    needs_ema: bool = False

    def __init__(self, config: Any, image: ImageSpec) -> None:
        super().__init__()
        self.config = config
        self.image = image
        self.spec = self.token_spec(config, image)

    @classmethod
    @abstractmethod
    def token_spec(cls, config: Any, image: ImageSpec) -> TokenSpec: ...

    @abstractmethod
    def forward(self, images: Tensor) -> Tokens: ...

    def train(self, mode: bool = True) -> "Tokenizer":
        return super().train(False)

    def freeze(self) -> "Tokenizer":
        self.requires_grad_(False)
        return self.eval()

    def attach(self, encoder: nn.Module, ema: nn.Module | None = None) -> None:
        """Called with the student's encoder when the model is built, and again with its EMA
        copy (``train.ema``) when training starts. A tokenizer whose targets come from the student
        itself (``student``, NEPA) keeps them, unregistered, so they stay out of its parameters;
        every other tokenizer ignores them."""

    def __call__(self, images: Tensor) -> Tokens:
        with torch.no_grad():
            return super().__call__(images)


class Ordering(ABC):
    """Decides the segments of a grid (``layout``) and draws per-sample orders of them.

    Training asks for :meth:`plan_samples`: each sample's order drawn from its own seed (a
    function of the run's seed, the epoch and the sample's index), so the same recipe trains the
    same model on any number of ranks. Its default calls :meth:`plan` once per sample with a
    generator seeded for that sample; an ordering may override it with a batched draw that gives
    the same rows.
    """

    layout: SegmentLayout

    def __init__(self, config: Any, grid: tuple[int, int]) -> None:
        self.config = config
        self.grid = grid

    @abstractmethod
    def plan(self, batch_size: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> Plan: ...

    def plan_samples(self, seeds: Sequence[int], device: torch.device | str | None = None) -> Plan:
        """One order per sample, row b drawn from a generator seeded with ``seeds[b]`` alone."""
        rows = [self.plan(1, seeded_generator(seed), device).order for seed in seeds]
        return Plan(self.layout, torch.cat(rows))


@traceable
@attrs.frozen
class EncoderOutput:
    """The encoder's view of the visible segments (1..S-1), CLS first when present.

    ``last`` is the final (normed) output, ``taps`` the raw outputs of the tapped blocks; all are
    (B, P + L, D) with P = ``num_prefix`` (0 or 1) and L = (S - 1) x tokens per segment.
    """

    last: Tensor
    taps: tuple[Tensor, ...]
    num_prefix: int


@attrs.frozen
class DecoderContext:
    """What a decoder factory needs to know about the model around it."""

    predicts: Role
    encoder_dim: int
    num_taps: int
    out_dim: int
    grid: tuple[int, int]  # the student's token grid
    layout: SegmentLayout
    cls_target: bool  # the tokenizer has a CLS target to predict
    encoder_cls: bool  # the encoder output has a CLS token at position 0

    @property
    def tokens_per_segment(self) -> int:
        return self.layout.tokens_per_segment(self.grid)

    def require_encoder_cls(self) -> None:
        """For a decoder that predicts the CLS target from the encoder's CLS token: a ValueError
        when the tokenizer has a CLS target and the encoder no class token."""
        if self.cls_target and not self.encoder_cls:
            raise ValueError("the tokenizer has a CLS target but the encoder has no class token; "
                             "set encoder.class_token = true")


@traceable
@attrs.frozen
class Prediction:
    """Predictions for S-1 segments on the student's grid (B, S-1, T, D), plus CLS (B, D)."""

    tokens: Tensor
    cls: Tensor | None = None


class Decoder(nn.Module, ABC):
    """Encoder memory + plan -> :class:`Prediction` for the segments its role targets.

    ``predicts = "next"`` scores the output for visible segment k against segment k+1;
    ``"visible"`` scores it against segment k itself.
    """

    #: Whether the decoder reads ``EncoderOutput.last`` (the encoder's final norm). When no
    #: decoder does, that norm is frozen so every trained parameter takes part in the loss.
    reads_final_output: bool = True
    #: Recompute the decoder's blocks in backward instead of keeping their activations
    #: (``train.activation_checkpointing``); a decoder with blocks honours it.
    grad_checkpointing: bool = False

    def __init__(self, config: Any, context: DecoderContext) -> None:
        super().__init__()
        self.config = config
        self.context = context

    @abstractmethod
    def forward(self, memory: EncoderOutput, plan: Plan) -> Prediction: ...


class Target(ABC):
    """Scores aligned predictions against tokens, one loss value per token.

    The factory raises ValueError when the tokens are of a kind it cannot score (say, ``ce`` on
    features); the recipe checker reports that before any model is built.
    """

    def __init__(self, config: Any, spec: TokenSpec) -> None:
        self.config = config
        self.spec = spec

    @property
    def output_dim(self) -> int:
        """Width of the predictions decoders must produce (logits or features)."""
        return self.spec.dim

    @abstractmethod
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Prediction (N, D) vs target (N,) ids or (N, D) features -> loss per token (N,)."""
