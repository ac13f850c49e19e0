"""Attention over a plan's block-causal mask by one of two backends.

``sdpa``: ``F.scaled_dot_product_attention`` with the boolean mask (:meth:`Plan.mask`), on any
device; on the CPU in bf16 the same attention is written out (``softmax(q k^T / sqrt(d)) v``,
:func:`explicit_attention`), which torch 2.14's CPU kernels run 1.7-9x faster than SDPA's flash
kernel in that precision (forward + backward; docs/performance.md).

``flex``: ``torch.nn.attention.flex_attention`` with a ``BlockMask`` built from the same rule
(:func:`arvision.plan.flex_block_mask`): compiled, its kernels skip the blocks the mask hides
entirely. In torch 2.14 flex attention has no backward on the CPU, so training with it
needs CUDA; ``auto`` picks flex on CUDA and SDPA elsewhere.

Attention layers take either mask as ``attn_mask`` and dispatch on its type, so the encoder and
decoders hand on whatever the plan gives them.
"""

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention

__all__ = ["AttentionBackend", "MaskedAttention", "attend", "choose_backend",
           "explicit_attention"]

AttentionBackend = Literal["sdpa", "flex"]

#: Flex attention's CUDA kernels need heads at least this wide (triton's tl.dot); narrower heads
#: (tiny test models) attend through SDPA with the BlockMask's rule made dense.
FLEX_MIN_HEAD_DIM = 16


def choose_backend(setting: str, device: torch.device) -> AttentionBackend:
    """``train.attention_backend`` on ``device``: 'auto' is flex on CUDA, else SDPA; 'flex'
    elsewhere than on CUDA is a ValueError (no backward on the CPU)."""
    if setting == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    if setting == "flex" and device.type != "cuda":
        raise ValueError(f"'flex' needs CUDA (flex attention has no backward on {device.type} in "
                         f"torch {torch.__version__.split('+')[0]}); use 'auto' or 'sdpa'")
    return setting


@functools.cache
def _compiled_flex_attention():
    """Flex attention compiled once (eager flex attention is an unfused reference)."""
    return torch.compile(flex_attention, dynamic=False)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                       dropout_p: float = 0.0) -> Tensor:
    """SDPA's math written out: (B, H, N, C) x (B, H, M, C) -> (B, H, N, C); ``mask`` boolean,
    broadcast to (B, H, N, M), True = attend. Under CPU autocast the scores and the softmax's
    output are bf16 (torch's kernel computes in fp32 inside), as in timm's unfused attention."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def _bf16_on_cpu(q: Tensor) -> bool:
    """Whether attention over ``q`` runs in bf16 on the CPU (bf16 inputs, or bf16 autocast)."""
    if q.device.type != "cpu":
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return q.dtype == torch.bfloat16 or autocast


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | BlockMask | None,
           dropout_p: float = 0.0) -> Tensor:
    """Scaled dot-product attention, (B, H, N, C) x (B, H, M, C) -> (B, H, N, C), masked by a
    boolean mask (True = attend; SDPA, or :func:`explicit_attention` in bf16 on the CPU) or a
    ``BlockMask`` (flex attention)."""
    if not isinstance(mask, BlockMask):
        if _bf16_on_cpu(q):
            return explicit_attention(q, k, v, mask, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if dropout_p:
        raise ValueError("flex attention has no attention dropout; use attention_backend 'sdpa'")
    if q.shape[-1] < FLEX_MIN_HEAD_DIM:
        dense = create_mask(mask.mask_mod, mask.shape[0], None, *mask.seq_lengths, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)  # (B | 1, 1, N, M) mask
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        return _compiled_flex_attention()(q, k, v, block_mask=mask)
    return flex_attention(q, k, v, block_mask=mask)  # inside a compiled graph, or on the CPU


class MaskedAttention(Attention):
    """timm's self-attention (same parameters, same names) that also takes a ``BlockMask``.

    Injected as ``attn_layer`` into timm blocks. It computes q, k, v as timm's does, then
    :func:`attend` (so bf16 on the CPU takes the explicit path); ``is_causal`` is timm's own
    forward.
    """

    def forward(self, x: Tensor, attn_mask: Tensor | BlockMask | None = None,
                is_causal: bool = False) -> Tensor:
        if is_causal:
            return super().forward(x, attn_mask, is_causal)
        batch, length, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, C/H) each
        q, k = self.q_norm(q), self.k_norm(k)
        dropout = self.attn_drop.p if self.training else 0.0
        x = attend(q, k, v, attn_mask, dropout).transpose(1, 2).reshape(batch, length, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
