"""Built-in decoders: linear (iGPT), mlp (AIM), transformer (D-iGPT)."""

import attrs
from torch import nn

from arvision import hookimpl
from arvision.components import Decoder, DecoderContext, EncoderOutput, Prediction
from arvision.plan import Plan

from .mlp_decoder import MLPDecoder, MLPDecoderConfig
from .transformer_decoder import TransformerDecoder, TransformerDecoderConfig

__all__ = ["LinearConfig", "LinearDecoder"]


@attrs.frozen
class LinearConfig:
    """A linear head on the encoder's final (layer-normed) output, as iGPT's."""


class LinearDecoder(Decoder):
    """Linear map of each visible token's final output to the target of its role's segment.

    For ``next``, token j of segment k predicts token j of segment k+1 (with one token per
    segment this is next-token prediction).
    """

    def __init__(self, config: LinearConfig, context: DecoderContext) -> None:
        super().__init__(config, context)
        context.require_encoder_cls()
        self.head = nn.Linear(context.encoder_dim, context.out_dim)

    def forward(self, memory: EncoderOutput, plan: Plan) -> Prediction:
        tokens = memory.last[:, memory.num_prefix:]  # (B, L, D), L = (S-1) * T
        batch = tokens.shape[0]
        logits = self.head(tokens).view(batch, plan.num_segments - 1,
                                        self.context.tokens_per_segment, -1)  # (B, S-1, T, out)
        cls = self.head(memory.last[:, 0]) if self.context.cls_target else None  # (B, out)
        return Prediction(logits, cls)


@hookimpl
def register_decoders(register):
    register("linear", LinearDecoder, LinearConfig)
    register("mlp", MLPDecoder, MLPDecoderConfig)
    register("transformer", TransformerDecoder, TransformerDecoderConfig)
