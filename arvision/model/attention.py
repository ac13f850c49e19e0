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
                       dropout_p: float = 0.0, recompute_weights: bool = False) -> Tensor:
    """SDPA's math written out: (B, H, N, C) x (B, H, M, C) -> (B, H, N, C); ``mask`` boolean,
    broadcast to (B, H, N, M), True = attend. Under CPU autocast the scores and the softmax's
    output are bf16 (torch's kernel computes in fp32 inside), as in timm's unfused attention.

    With ``recompute_weights`` (``train.recompute``), no dropout and autograd recording,
    backward recomputes the attention weights from q and k (:class:`_RecomputedWeights`)
    instead of keeping them: the (B, H, N, M) weights are the largest activation of a decoder
    layer, and recomputing them costs one q k^T and one softmax."""
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not (recompute_weights and recording) or dropout_p:
        weights = _attention_weights(_scaled(q), k, mask)
        if dropout_p:
            weights = F.dropout(weights, dropout_p)
        return weights @ v.contiguous()
    return _RecomputedWeights.apply(q, k, v, mask)


def _scaled(q: Tensor) -> Tensor:
    """q / sqrt(C), laid out (B, H, N, C) in memory (the products below run 2x faster on
    contiguous operands than on q's permuted view of the qkv projection)."""
    return q.contiguous() * q.shape[-1] ** -0.5


def _attention_weights(scaled_q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(C)) over the attended keys, from q / sqrt(C): (B, H, N, M).

    The mask enters as an additive 0 / -inf bias in the scores' dtype: the same scores as
    ``masked_fill`` (x + 0 = x), 6x faster on the CPU with a mask broadcast over the heads."""
    scores = scaled_q @ k.contiguous().transpose(-2, -1)  # (B, H, N, M)
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
        scores = scores + bias.masked_fill_(~mask, float("-inf"))
    return scores.softmax(dim=-1)


class _RecomputedWeights(torch.autograd.Function):
    """``_attention_weights(q, k, mask) @ v`` keeping q, k, v and the mask for backward, which
    recomputes the weights the same way and applies autograd's own formulas for the two
    products and the softmax (so the gradients equal those of the recorded graph). A masked
    score's gradient is the softmax's, 0 where the weight is 0, so the mask's zeroing is left
    out. Backward runs under forward's autocast state, so the recomputed weights are forward's."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        ctx.save_for_backward(q, k, v, mask)
        return _attention_weights(_scaled(q), k, mask) @ v.contiguous()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, mask = ctx.saved_tensors
        k, v = k.contiguous(), v.contiguous()  # (B, H, M, C)
        scaled_q = _scaled(q)
        weights = _attention_weights(scaled_q, k, mask)  # (B, H, N, M)
        grad_v = weights.transpose(-2, -1) @ grad_out
        grad_weights = grad_out @ v.transpose(-2, -1)
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        grad_q = (grad_scores @ k).to(q.dtype) * q.shape[-1] ** -0.5  # scaled in q's dtype
        grad_k = (scaled_q.transpose(-2, -1) @ grad_scores).transpose(-2, -1)
        return grad_q, grad_k, grad_v, None


def _bf16_on_cpu(q: Tensor) -> bool:
    """Whether attention over ``q`` runs in bf16 on the CPU (bf16 inputs, or bf16 autocast)."""
    if q.device.type != "cpu":
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return q.dtype == torch.bfloat16 or autocast


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | BlockMask | None,
           dropout_p: float = 0.0, recompute_weights: bool = False) -> Tensor:
    """Scaled dot-product attention, (B, H, N, C) x (B, H, M, C) -> (B, H, N, C), masked by a
    boolean mask (True = attend; SDPA, or :func:`explicit_attention` in bf16 on the CPU) or a
    ``BlockMask`` (flex attention). ``recompute_weights``: see :func:`explicit_attention` (the
    other paths keep no weights)."""
    if not isinstance(mask, BlockMask):
        if _bf16_on_cpu(q):
            return explicit_attention(q, k, v, mask, dropout_p, recompute_weights)
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
    forward. ``recompute_weights`` is ``train.recompute``'s (:func:`arvision.model.recompute.
    set_recompute`).
    """

    recompute_weights: bool = False

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
        x = attend(q, k, v, attn_mask, dropout, self.recompute_weights)  # (B, H, N, C/H)
        x = x.transpose(1, 2).reshape(batch, length, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
