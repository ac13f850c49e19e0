"""AIM's MLP prediction head: a stack of MLP blocks applied to each token of the last layer.

    encoder output (normed) (B, P+L, E) --Linear--> (B, P+L, dim) + sin-cos position
    depth x [x + LayerNorm(x) (identity attention);  x + MLP(LayerNorm(x))]
    --LayerNorm--> --Linear--> (B, P+L, out)                       every token on its own

Checked against the released AIM v1 pretraining setup, ml-l3m's
``configs/aimv1/001_aim_v1_600M.yaml`` with ``l3m/model/heads/simple_decoder.py``
(``SimpleDecoder``), ``l3m/model/trunks/transformer.py`` (``Block``) and
``l3m/model/layers/ffn.py`` (``MLP``):

- the head reads the trunk's output after its final LayerNorm (``post_trunk_norm: true``);
- a Linear (with bias) projects it to the head width (AIM-0.6B: 1536 -> 2048);
- a fixed 2-D sin-cos position is added (``decoder_pos_embed``, not trained);
- 12 blocks (``head_num_blocks``), each a pre-norm transformer block whose attention is
  ``GenericIdentity``: ``x + norm_1(x)`` then ``x + mlp(norm_2(x))``, so each block also adds
  its LayerNorm'ed input to the residual (``identity_attention = true`` keeps this; false gives
  plain residual MLP blocks);
- the MLP is fc1 -> GELU -> fc2, hidden = 4 x width (``mlp_ratio: 4``), without biases
  (``use_bias: false``); LayerNorms with eps 1e-5 (``LayerNormFP32``);
- a final LayerNorm (``post_decoder_norm``) and a Linear with bias to the target width (588 =
  14 x 14 x 3 pixels);
- initialisation: xavier-uniform Linear weights, zero biases, LayerNorms at 1 and 0, the output
  Linear ``fan_in`` variance scaling by 1 / (1 + depth) (truncated normal).

One difference: ml-l3m adds the position of the token at each place of the raster sequence (the
input's); here it is the position of the token each output predicts. For a fixed order the two
determine each other, so they carry the same information; for a random order only the predicted
token's position says what to predict.
"""

import attrs
from timm.layers import Mlp, build_sincos2d_pos_embed
from timm.layers.weight_init import variance_scaling_
from torch import Tensor, nn

from arvision.components import Decoder, DecoderContext, EncoderOutput, Prediction
from arvision.config import positive, setting
from arvision.plan import Plan

__all__ = ["MLPBlock", "MLPDecoder", "MLPDecoderConfig"]


@attrs.frozen
class MLPDecoderConfig:
    dim: int = setting(2048, "head width (AIM-0.6B: 2048)", validator=positive)
    depth: int = setting(12, "MLP blocks (AIM: 12)", validator=positive)
    mlp_ratio: float = setting(4.0, "MLP hidden width / dim", validator=positive)
    norm_eps: float = setting(1e-5, "LayerNorm epsilon (AIM: 1e-5)", validator=positive)
    bias: bool = setting(False, "biases in the blocks' MLPs (AIM: none)")
    identity_attention: bool = setting(
        True, "each block also adds its LayerNorm'ed input to the residual, as AIM's released "
        "head does (a transformer block whose attention is an identity); false: plain "
        "residual MLP blocks")
    position: bool = setting(True, "add the fixed sin-cos position of the token each output "
                             "predicts")


class MLPBlock(nn.Module):
    """``x + norm1(x)`` (when ``identity_attention``), then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, hidden: int, eps: float, bias: bool,
                 identity_attention: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps) if identity_attention else None
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm1 is not None:
            x = x + self.norm1(x)
        return x + self.mlp(self.norm2(x))


class MLPDecoder(Decoder):
    """AIM's MLP head: each token of the final layer on its own through residual MLP blocks."""

    def __init__(self, config: MLPDecoderConfig, context: DecoderContext) -> None:
        super().__init__(config, context)
        context.require_encoder_cls()
        dim = config.dim
        self.proj = nn.Linear(context.encoder_dim, dim)
        if config.position:
            position = build_sincos2d_pos_embed(list(context.grid), dim)  # (h*w, dim), fixed
            self.register_buffer("position", position[None], persistent=False)  # (1, h*w, dim)
        else:
            self.position = None
        self.blocks = nn.Sequential(*(
            MLPBlock(dim, int(dim * config.mlp_ratio), config.norm_eps, config.bias,
                     config.identity_attention) for _ in range(config.depth)))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, context.out_dim)
        self.apply(_init_weights)
        variance_scaling_(self.head.weight, scale=1 / (1 + config.depth), mode="fan_in",
                          distribution="truncated_normal")

    def forward(self, memory: EncoderOutput, plan: Plan) -> Prediction:
        prefix, batch = memory.num_prefix, memory.last.shape[0]
        x = self.proj(memory.last)  # (B, P+L, dim)
        if self.position is not None:
            segments = slice(1, None) if self.context.predicts == "next" else slice(None, -1)
            position = plan.gather(self.position.expand(batch, -1, -1), self.context.grid,
                                   segments).flatten(1, 2)  # (B, L, dim)
            x = x + nn.functional.pad(position, (0, 0, prefix, 0))  # CLS: no position
        out = self.head(self.norm(self.blocks(x)))  # (B, P+L, out)
        tokens = out[:, prefix:].view(batch, plan.num_segments - 1,
                                      self.context.tokens_per_segment, -1)  # (B, S-1, T, out)
        return Prediction(tokens, out[:, 0] if self.context.cls_target else None)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
