"""The student encoder: a timm VisionTransformer run over the visible segments of a plan."""

from collections.abc import Sequence

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..components import EncoderOutput
from ..plan import Plan
from ..recipe.schema import EncoderConfig
from .attention import MaskedAttention
from .recompute import RecomputingMlp, run_block
from .vit import channel_stat, create_vit, shape_overrides

__all__ = ["Encoder", "create_encoder_vit", "default_taps"]


def default_taps(depth: int) -> tuple[int, ...]:
    """Four blocks spread like 6/8/10/12 of 12, scaled to ``depth`` (1-based)."""
    return tuple(sorted({max(1, round(depth * k / 12)) for k in (6, 8, 10, 12)}))


def create_encoder_vit(config: EncoderConfig, img_size: int | None, patch_size: int | None,
                       in_chans: int) -> VisionTransformer:
    """The timm model named by the recipe, headless, with the recipe's overrides (``img_size``,
    ``patch_size`` and ``in_chans`` as resolved from the data and the tokenizer); its attention
    layers also take a flex ``BlockMask`` (:class:`MaskedAttention`: timm's parameters) and its
    MLPs recompute their activation in backward (:class:`RecomputingMlp`: timm's parameters)."""
    shape = {**shape_overrides(config), "img_size": img_size, "patch_size": patch_size,
             "in_chans": in_chans}
    return create_vit(config.name, "encoder.name", num_classes=0, global_pool="",
                      drop_path_rate=config.drop_path, attn_layer=MaskedAttention,
                      mlp_layer=RecomputingMlp, **shape)


class Encoder(nn.Module):
    """Patch (or id) embedding + position, gathered in plan order, block-causal ViT blocks.

    ``vit`` is a timm VisionTransformer whose attention layers also take a flex ``BlockMask``
    (same parameters), so the trained encoder exports as a plain timm checkpoint.
    """

    def __init__(self, config: EncoderConfig, img_size: int, patch_size: int | None,
                 in_chans: int, taps: Sequence[int], vocab_size: int | None = None) -> None:
        super().__init__()
        self.vit = create_encoder_vit(config, img_size, patch_size, in_chans)
        self.grid: tuple[int, int] = tuple(self.vit.patch_embed.grid_size)
        self.taps = tuple(taps)  # 1-based blocks whose outputs the decoders read
        self.num_prefix = 1 if self.vit.cls_token is not None else 0
        self.token_embed = None
        self.grad_checkpointing = False  # recompute blocks in backward (train.activation_checkpointing)
        if config.stem == "tokens":  # iGPT: embed ids, one token per id
            self.token_embed = nn.Embedding(vocab_size, self.dim)
            nn.init.normal_(self.token_embed.weight, std=0.02)
            self.vit.patch_embed.proj = nn.Identity()  # pixels are never embedded
        if config.pos_embed == "sincos":
            self._fix_sincos_positions()
        self.register_buffer("mean", channel_stat(config.mean, in_chans, "encoder.mean"),
                             persistent=False)
        self.register_buffer("std", channel_stat(config.std, in_chans, "encoder.std"),
                             persistent=False)

    def _fix_sincos_positions(self) -> None:
        """Fixed 2-D sin-cos positions (zero for CLS), excluded from training."""
        pos = self.vit.pos_embed  # (1, [1 +] N, D)
        table = build_sincos2d_pos_embed(list(self.grid), self.dim)  # (N, D)
        with torch.no_grad():
            pos.zero_()
            pos[0, pos.shape[1] - table.shape[0]:] = table
        pos.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def embed(self, images: Tensor, ids: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) in [0, 1], or ids (B, h, w) -> positioned tokens (B, N, D)."""
        if self.token_embed is not None:
            x = self.token_embed(ids.flatten(1))  # (B, N, D)
        else:
            x = self.vit.patch_embed((images - self.mean) / self.std)  # (B, N, D)
        pos = self.vit.pos_embed  # (1, [1 +] N, D)
        return x + pos[:, pos.shape[1] - x.shape[1]:]

    def prefix(self, batch: int) -> Tensor | None:
        """The CLS token with its position: (B, 1, D), or None."""
        if self.vit.cls_token is None:
            return None
        cls = self.vit.cls_token
        if not self.vit.no_embed_class:
            cls = cls + self.vit.pos_embed[:, :1]
        return cls.expand(batch, -1, -1)

    def forward(self, images: Tensor, plan: Plan, ids: Tensor | None = None) -> EncoderOutput:
        x = self.embed(images, ids)  # (B, N, D)
        x = plan.gather(x, self.grid, slice(None, -1)).flatten(1, 2)  # (B, L, D): segments 1..S-1
        cls = self.prefix(x.shape[0])
        if cls is not None:
            x = torch.cat([cls, x], dim=1)  # (B, 1 + L, D)
        x = self.vit.norm_pre(self.vit.pos_drop(x))
        mask = plan.attention_mask(plan.layout.tokens_per_segment(self.grid), cls is not None)
        taps = []
        for index, block in enumerate(self.vit.blocks, start=1):
            x = run_block(block, self.grad_checkpointing and self.training, x, attn_mask=mask)
            if index in self.taps:
                taps.append(x)
        return EncoderOutput(self.vit.norm(x), tuple(taps), self.num_prefix)

    def features(self, images: Tensor, blocks: Sequence[int], ids: Tensor | None = None,
                 attn_mask: Tensor | None = None) -> list[Tensor]:
        """For probes: every token in natural (raster) order; the outputs of the 1-based
        ``blocks``, each (B, num_prefix + N, D), CLS first.

        Without ``attn_mask`` attention is bidirectional (as AIM and D-iGPT evaluate); with one
        (boolean, True = attend, over CLS + every token in natural order, e.g.
        :meth:`~arvision.plan.Plan.natural_mask`) the encoder reads the image as it was trained.
        """
        x = self.embed(images, ids)  # (B, N, D)
        cls = self.prefix(x.shape[0])
        if cls is not None:
            x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        x = self.vit.norm_pre(self.vit.pos_drop(x))
        outputs = {}
        for index, block in enumerate(self.vit.blocks[:max(blocks)], start=1):
            x = block(x, attn_mask=attn_mask)  # None: every token sees every token
            outputs[index] = x
        return [outputs[index] for index in blocks]
