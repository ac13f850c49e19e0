"""D-iGPT's transformer decoder: multi-level encoder memory, masked self- and cross-attention.

Each decoder layer reads its own slice of a memory made from several encoder blocks::

    taps k=1..K (B, P+L, E) --LayerNorm_k--> concat (B, P+L, K*E) --Linear--> depth x (B, P+L, dim)

Queries are one learned token plus the fixed sin-cos position of the token each predicts (the
positions of the next segments for ``predicts = "next"``, of the visible ones for ``"visible"``),
with a CLS query first when the encoder has a CLS token. Every layer is pre-norm: masked
self-attention, masked cross-attention to its memory slice (normed), MLP. The block-causal mask is
the encoder's: a query for segment k reads memory of segments <= k only.
"""

from typing import ClassVar

import attrs
import torch
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from arvision.components import Decoder, DecoderContext, EncoderOutput, Prediction
from arvision.config import positive, setting
from arvision.model.attention import MaskedAttention, attend
from arvision.model.recompute import RecomputingMlp, run_block
from arvision.plan import Plan

__all__ = ["CrossAttention", "DecoderBlock", "MemoryProjection", "TransformerDecoder",
           "TransformerDecoderConfig"]


@attrs.frozen
class TransformerDecoderConfig:
    dim: int = setting(1024, "decoder width (D-iGPT: 1024)", validator=positive)
    depth: int = setting(2, "decoder layers (D-iGPT: 2)", validator=positive)
    num_heads: int = setting(32, "attention heads (D-iGPT: 32)", validator=positive)
    mlp_ratio: float = setting(4.0, "MLP hidden width / dim", validator=positive)
    norm_eps: float = setting(1e-6, "LayerNorm epsilon", validator=positive)
    memory_norm_eps: float | None = setting(
        None, "epsilon of the LayerNorms on the encoder taps (default: norm_eps; the released "
        "D-iGPT code uses LayerNorm's default 1e-5 there)", validator=positive)


class MemoryProjection(nn.Module):
    """Encoder taps -> one memory slice per decoder layer (each tap with its own LayerNorm)."""

    def __init__(self, encoder_dim: int, num_taps: int, dim: int, depth: int, eps: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(encoder_dim, eps=eps) for _ in range(num_taps))
        self.proj = nn.Linear(num_taps * encoder_dim, depth * dim)
        self.depth = depth

    def forward(self, taps: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = torch.cat([norm(tap) for norm, tap in zip(self.norms, taps, strict=True)], dim=-1)
        return self.proj(x).chunk(self.depth, dim=-1)  # depth x (B, P+L, dim)


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, N, C) over a memory (B, M, C); mask (N, M), boolean
    or a flex ``BlockMask``."""

    recompute_weights: bool = False  # train.recompute (arvision.model.recompute.set_recompute)

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | BlockMask) -> Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads
        q = self.q(x).view(batch, length, heads, dim // heads).transpose(1, 2)  # (B, H, N, C/H)
        kv = self.kv(memory).view(batch, memory.shape[1], 2, heads, dim // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, M, C/H) each
        out = attend(q, k, v, mask, recompute_weights=self.recompute_weights)  # (B, H, N, C/H)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DecoderBlock(nn.Module):
    """Pre-norm: masked self-attention, masked cross-attention to a (normed) memory, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = MaskedAttention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm_query = nn.LayerNorm(dim, eps=eps)
        self.norm_memory = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = RecomputingMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | BlockMask) -> Tensor:
        x = x + self.self_attn(self.norm1(x), attn_mask=mask)
        x = x + self.cross_attn(self.norm_query(x), self.norm_memory(memory), mask)
        return x + self.mlp(self.norm2(x))


class TransformerDecoder(Decoder):
    """D-iGPT's generative (``next``) or discriminative (``visible``) decoder."""

    reads_final_output = False  # it reads the tapped blocks, not the final norm
    #: Where each part lives in this module (for importers of other code bases' weights, such as
    #: ``arvision convert digpt-official``): role -> submodule or parameter path.
    PARTS: ClassVar[dict[str, str]] = {
        "query": "query", "positions": "position", "memory_norms": "memory.norms",
        "memory_projection": "memory.proj", "layers": "blocks", "final_norm": "norm",
        "head": "head",
    }
    #: The parts of one of ``blocks`` (:class:`DecoderBlock`): role -> submodule path.
    BLOCK_PARTS: ClassVar[dict[str, str]] = {
        "self_attention_norm": "norm1", "self_attention_qkv": "self_attn.qkv",
        "self_attention_proj": "self_attn.proj", "cross_attention_query_norm": "norm_query",
        "cross_attention_memory_norm": "norm_memory", "cross_attention_q": "cross_attn.q",
        "cross_attention_kv": "cross_attn.kv", "cross_attention_proj": "cross_attn.proj",
        "mlp_norm": "norm2", "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2",
    }

    def __init__(self, config: TransformerDecoderConfig, context: DecoderContext) -> None:
        super().__init__(config, context)
        if config.dim % config.num_heads:
            raise ValueError(f"dim {config.dim} is not divisible by num_heads {config.num_heads}")
        context.require_encoder_cls()
        dim = config.dim
        memory_eps = config.norm_eps if config.memory_norm_eps is None else config.memory_norm_eps
        self.memory = MemoryProjection(context.encoder_dim, context.num_taps, dim, config.depth,
                                       memory_eps)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed (not trained) but saved, so converted weights keep their own table (D-iGPT's
        # sin-cos layout differs from timm's); a checkpoint without it gets this default.
        position = build_sincos2d_pos_embed(list(context.grid), dim)  # (h*w, dim)
        self.register_buffer("position", position[None])  # (1, h*w, dim)
        self.register_load_state_dict_pre_hook(_default_position)
        self.blocks = nn.ModuleList(DecoderBlock(dim, config.num_heads, config.mlp_ratio,
                                                 config.norm_eps) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, context.out_dim)
        self.apply(_init_weights)
        trunc_normal_(self.query, std=0.02)

    def queries(self, plan: Plan, batch: int, prefix: int) -> Tensor:
        """Learned token + position of each predicted token: (B, P + L, dim)."""
        segments = slice(1, None) if self.context.predicts == "next" else slice(None, -1)
        position = plan.gather(self.position.expand(batch, -1, -1), self.context.grid, segments)
        x = self.query + position.flatten(1, 2)  # (B, L, dim)
        if prefix:
            x = torch.cat([self.query.expand(batch, prefix, -1), x], dim=1)  # CLS: no position
        return x

    def forward(self, memory: EncoderOutput, plan: Plan) -> Prediction:
        batch, prefix = memory.last.shape[0], memory.num_prefix
        slices = self.memory(memory.taps)  # depth x (B, P+L, dim)
        mask = plan.attention_mask(self.context.tokens_per_segment, prefix > 0)  # (P+L, P+L)
        x = self.queries(plan, batch, prefix)
        for block, memory_slice in zip(self.blocks, slices, strict=True):
            x = run_block(block, self.grad_checkpointing and self.training, x, memory_slice, mask)
        out = self.head(self.norm(x))  # (B, P+L, out)
        tokens = out[:, prefix:].view(batch, plan.num_segments - 1,
                                      self.context.tokens_per_segment, -1)  # (B, S-1, T, out)
        return Prediction(tokens, out[:, 0] if self.context.cls_target else None)


def _default_position(module: TransformerDecoder, state: dict, prefix: str, *_args) -> None:
    state.setdefault(prefix + "position", module.position)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
