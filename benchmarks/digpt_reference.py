"""The released D-iGPT model (OliverRensu/D-iGPT, DiGPT_torch/models_digpt.py, vit.py and
util/pos_embed.py, compared line by line), restated in eager PyTorch at any size.

It keeps the released parameter names and quirks: CLS last, an additive mask made by
reflect-padding a block-triangular one, one LayerNorm (eps 1e-5) shared by the four taps, the
interleaved ``reshape(B, L, dim, depth)`` of the memory projections, ``forward_encoder`` returning
``(x_kd, x_ar)`` and ``forward`` unpacking it as ``(latent_ar, latent_kd)`` (the generative decoder
reads the ``kd_*`` memory), MAE-layout sin-cos tables and a bilinear resample of every predicted
segment to the teacher's cell. Like the released model it has 2x2 segments and taps blocks
6/8/10/12 (a depth-12 encoder). Its segment permutation is an argument (the original draws
``torch.randperm``).

Two users: tests/test_convert.py (``arvision convert digpt-official`` gives this model's losses)
and benchmarks/train_step.py's ``reference`` mode (the plain released model's step, timed at the
arvision model's geometry).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Block", "CrossAttention", "DecoderBlock", "Mlp", "Reference", "SelfAttention",
           "additive_mask", "attend", "mae_sincos", "to_cells"]


def mae_sincos(dim: int, grid: int) -> Tensor:
    """MAE's fixed table (1 + grid^2, dim): a zero CLS row, then [sin, cos](column) | [sin, cos](row)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def one_axis(coord: Tensor) -> Tensor:
        angles = coord.flatten().double()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()
    return torch.cat([torch.zeros(1, dim), table])


def additive_mask(segments: int, per_segment: int) -> Tensor:
    """0 where attending, -inf elsewhere, over segments then one CLS row/column (reflect pad)."""
    blocks = torch.zeros(segments, segments).masked_fill(
        torch.ones(segments, segments).triu(1).bool(), float("-inf"))
    full = blocks.repeat_interleave(per_segment, 0).repeat_interleave(per_segment, 1)
    return F.pad(full[None, None], (0, 1, 0, 1), mode="reflect")[0, 0]


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor) -> Tensor:
    """(B, N, C) each -> softmax(q k^T / sqrt(d) + mask) v, per head, (B, N, C)."""
    batch, length, dim = q.shape

    def split(t: Tensor) -> Tensor:
        return t.view(batch, -1, heads, dim // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(dim // heads) + mask
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(batch, length, dim)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.proj(attend(*self.qkv(x).chunk(3, dim=-1), self.heads, mask))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.q, self.kv = heads, nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        return self.proj(attend(self.q(x), *self.kv(memory).chunk(2, dim=-1), self.heads, mask))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = SelfAttention(dim, heads), Mlp(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.norm2_1, self.norm2_2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn1, self.attn2 = SelfAttention(dim, heads), CrossAttention(dim, heads)
        self.mlp = Mlp(dim)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x), mask)
        x = x + self.attn2(self.norm2_1(x), self.norm2_2(memory), mask)
        return x + self.mlp(self.norm2(x))


def to_cells(x: Tensor, grid: int) -> Tensor:
    """(B, grid*grid, C) row-major -> (B, 4, cell*cell, C): 2x2 cells in raster order."""
    batch, cell, dim = x.shape[0], grid // 2, x.shape[-1]
    x = x.reshape(batch, 2, cell, 2, cell, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, 4, cell * cell, dim)


class Reference(nn.Module):
    """The released model's parameters (names and quirks) and forward, at any size."""

    def __init__(self, img: int, patch: int, dim: int, depth: int, heads: int, ddim: int,
                 ddepth: int, dheads: int, out: int) -> None:
        super().__init__()
        self.grid, self.heads, self.ddim, self.ddepth = img // patch, heads, ddim, ddepth
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(mae_sincos(dim, self.grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(mae_sincos(ddim, self.grid)[None], requires_grad=False)
        self.register_buffer("mask", additive_mask(3, (self.grid // 2) ** 2))
        for p in ("ar", "kd"):
            setattr(self, f"{p}_enc2dec", nn.Linear(4 * dim, ddepth * ddim))
            setattr(self, f"{p}_enc_norm", nn.ModuleList([nn.LayerNorm(dim)] * 4))  # shared, eps 1e-5
            setattr(self, f"{p}_blocks", nn.ModuleList(DecoderBlock(ddim, dheads)
                                                        for _ in range(ddepth)))
            setattr(self, f"{p}_token", nn.Parameter(torch.zeros(1, 1, ddim)))
            setattr(self, f"{p}_norm", nn.LayerNorm(ddim, eps=1e-6))
            setattr(self, f"{p}_pred", nn.Linear(ddim, out))

    def forward(self, images: Tensor, target: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images, target (B, 1 + T, C) CLS first, perm (B, 4) -> (ar_loss, kd_loss)."""
        batch, rows = images.shape[0], torch.arange(images.shape[0])[:, None]
        tgrid = math.isqrt(target.shape[1] - 1)
        labels = to_cells(target[:, 1:], tgrid)[rows, perm]  # (B, 4, t', C)
        # as released: forward_encoder returns (x_kd, x_ar, ...), forward unpacks (latent_ar, latent_kd)
        latent_ar, latent_kd, dec_pos = self.forward_encoder(images, perm)
        losses = []
        for p, latent, segments in (("ar", latent_ar, slice(1, None)), ("kd", latent_kd, slice(None, 3))):
            token = getattr(self, f"{p}_token")
            q = torch.cat([(token + dec_pos[:, segments]).flatten(1, 2),
                           (token + self.decoder_pos_embed[:, :1]).expand(batch, -1, -1)], dim=1)
            for i, block in enumerate(getattr(self, f"{p}_blocks")):
                q = block(q, latent[..., i], self.mask)
            pred = getattr(self, f"{p}_pred")(getattr(self, f"{p}_norm")(q))  # (B, 3t + 1, C)
            truth = torch.cat([labels[:, segments].flatten(1, 2), target[:, :1]], dim=1)
            losses.append(self.loss(pred, truth))
        return losses[0], losses[1]

    def forward_encoder(self, images: Tensor, perm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (x_kd, x_ar) memories (B, 3t + 1, ddim, ddepth) and the permuted decoder positions."""
        batch, rows = images.shape[0], torch.arange(images.shape[0])[:, None]
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = (to_cells(x, self.grid) + to_cells(self.pos_embed[:, 1:].expand(batch, -1, -1),
                                                self.grid))[rows, perm]  # (B, 4, t, D)
        dec_pos = to_cells(self.decoder_pos_embed[:, 1:].expand(batch, -1, -1), self.grid)[rows, perm]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat([x[:, :3].flatten(1, 2), cls], dim=1)  # CLS last
        taps = []
        for index, block in enumerate(self.blocks, start=1):
            x = block(x, self.mask)
            if index in (6, 8, 10, 12):
                taps.append(x)
        memories = {}
        for p in ("ar", "kd"):
            normed = [norm(tap) for norm, tap in zip(getattr(self, f"{p}_enc_norm"), taps, strict=True)]
            memory = getattr(self, f"{p}_enc2dec")(torch.cat(normed, dim=-1))
            memories[p] = memory.reshape(batch, memory.shape[1], self.ddim, self.ddepth)  # interleaved
        return memories["kd"], memories["ar"], dec_pos

    def loss(self, pred: Tensor, truth: Tensor) -> Tensor:
        batch, dim, cell = pred.shape[0], pred.shape[-1], self.grid // 2
        tcell = math.isqrt((truth.shape[1] - 1) // 3)
        cells = pred[:, :-1].reshape(batch * 3, cell, cell, dim).permute(0, 3, 1, 2)
        cells = F.interpolate(cells, size=(tcell, tcell), mode="bilinear")  # align_corners False
        cells = cells.permute(0, 2, 3, 1).reshape(batch, -1, dim)
        pred = torch.cat([cells, pred[:, -1:]], dim=1)
        pred, truth = pred / pred.norm(dim=-1, keepdim=True), truth / truth.norm(dim=-1, keepdim=True)
        return (2 - 2 * (pred * truth).sum(-1)).mean()
