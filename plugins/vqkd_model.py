"""BEiT v2's VQ-KD as a trainable model: encoder, quantiser, decoder, and a teacher to distil.

    images (B, C, H, W) in [0, 1]
      |-- teacher (frozen: any feature tokenizer) --------------> target (B, h, w, Dt)
      '-- 2x - 1 --> encoder (ViT, fc_norm of the patch tokens)   (B, h*w, D)
          --> encode_task_layer: Linear(D, D) - Tanh - Linear(D, d)   (B, h*w, d)   [fp32]
          --> quantiser: L2-normalise, nearest code, EMA update       (B, h*w, d) straight-through
          --> as an image (B, d, h, w) --> decoder (ViT, patch 1)     (B, h*w, Dd)
          --> decode_task_layer: Linear(Dd, Dd) - Tanh - Linear(Dd, Dt)   (B, h*w, Dt)
    loss = mean(1 - cos(reconstruction, target))  +  beta * mse(z_q.detach(), z)

What the reference does (microsoft/unilm ``beit2/modeling_vqkd.py``, ``VQKD``) and this module
does the same way:

- ``pre_process``: [0, 1] images to [-1, 1] (``x * 255 / 127.5 - 1``); the teacher gets the image
  in its own normalisation (the reference's ``ScalingLayerForClip`` undoes the [-1, 1] map and
  applies CLIP's mean/std; an arvision tokenizer owns its normalisation the same way).
- Encoder and decoder are ``modeling_finetune.VisionTransformer`` with ``use_mean_pooling``: the
  patch tokens through ``fc_norm`` (``return_patch_tokens=True``); the decoder reads the quantised
  map as an image of ``code_dim`` channels with patch size 1 (``decoder_config['patch_size'] = 1``,
  ``img_size = img_size // patch_size``, ``in_chans = code_dim``); its width is the encoder's
  (768) and its depth 1 or 3 in the released models. Both are timm's ``Beit`` here
  (:func:`arvision_plugins.vqkd_network.beit_vit`), the network the ``vqkd`` tokenizer runs, so the weights
  written are the official layout.
- ``encode_task_layer`` runs outside autocast (``torch.cuda.amp.autocast(enabled=False)``), and so
  does the quantiser; ``decode_task_layer`` maps to the teacher's width. Both task layers start
  from ``trunc_normal_(std=0.02)`` weights and zero biases (``_init_weights``).
- ``calculate_rec_loss``: ``(1 - cos(rec, target)).mean()`` over every patch token; the teacher's
  patch tokens only (CLIP: ``ln_post`` of all tokens but the class token, ``@ proj``). The total is
  ``emb_loss + rec_loss``; both are logged (``quant_loss``, ``rec_loss``).
- ``no_weight_decay``: the class tokens and position embeddings of both ViTs (and the codebook,
  which is no parameter here).

The teacher is left out of ``state_dict`` (the recipe rebuilds it), as the pretraining model does
with its tokenizer.
"""

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from arvision.components import Tokenizer
from arvision.engine import ModelOutput

from .vqkd_network import beit_vit
from .vqkd_quantizer import VectorQuantizer

__all__ = ["VQKDModel", "task_layer"]


def task_layer(width: int, out: int) -> nn.Sequential:
    """Linear(width, width) - Tanh - Linear(width, out), trunc-normal 0.02 weights, zero biases."""
    layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out))
    for linear in (layer[0], layer[2]):
        trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
    return layer


class VQKDModel(nn.Module):
    """Encoder -> codebook -> decoder, trained to reconstruct a teacher's patch features."""

    def __init__(self, encoder: nn.Module, quantizer: VectorQuantizer, decoder: nn.Module,
                 teacher: Tokenizer | None, teacher_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encode_task_layer = task_layer(encoder.embed_dim, quantizer.code_dim)
        self.quantize = quantizer
        self.decoder = decoder
        self.decode_task_layer = task_layer(decoder.embed_dim, teacher_dim)
        # None: built without weights (``--check``) or to tokenize only; forward needs a target.
        self.teacher = teacher.freeze() if teacher is not None else None
        self.grid = tuple(encoder.patch_embed.grid_size)  # (h, w)
        self._register_state_dict_hook(_drop_teacher)
        self._register_load_state_dict_pre_hook(self._keep_teacher)

    @classmethod
    def build(cls, *, size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
              num_heads: int, drop_path: float, decoder_dim: int, decoder_depth: int,
              decoder_heads: int, quantizer: VectorQuantizer, teacher: Tokenizer | None,
              teacher_dim: int) -> "VQKDModel":
        grid = size // patch_size
        encoder = beit_vit(size, patch_size, in_chans, embed_dim, depth, num_heads, drop_path)
        decoder = beit_vit(grid, 1, quantizer.code_dim, decoder_dim, decoder_depth, decoder_heads)
        return cls(encoder, quantizer, decoder, teacher, teacher_dim)

    def no_weight_decay(self) -> set[str]:
        return {f"{part}.{name}" for part in ("encoder", "decoder")
                for name in ("cls_token", "pos_embed")}

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, size, size) in [0, 1] -> code-space features z (B, h*w, code_dim), fp32."""
        x = self.encoder.forward_features(images * 2 - 1)  # (B, 1 + h*w, D); norm is an Identity
        x = self.encoder.fc_norm(x[:, 1:])  # (B, h*w, D)
        with torch.autocast(x.device.type, enabled=False):
            return self.encode_task_layer(x.float())  # (B, h*w, code_dim)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h*w, code_dim) -> reconstructed teacher features (B, h*w, teacher_dim)."""
        h, w = self.grid
        x = codes.transpose(1, 2).reshape(codes.shape[0], -1, h, w)  # (B, code_dim, h, w)
        x = self.decoder.forward_features(x)  # (B, 1 + h*w, Dd)
        return self.decode_task_layer(self.decoder.fc_norm(x[:, 1:]))  # (B, h*w, Dt)

    def forward(self, images: Tensor, target: Tensor | None = None) -> ModelOutput:
        """Images (B, C, size, size) in [0, 1]; ``target`` (B, h, w, Dt): the teacher's features
        (default: computed by the teacher)."""
        if target is None:
            target = self.teacher(images).tokens  # (B, h, w, Dt), no grad
        z = self.encode(images)  # (B, h*w, code_dim) fp32
        with torch.autocast(images.device.type, enabled=False):
            quantized = self.quantize(z)  # codes (B, h*w, code_dim)
        reconstruction = self.decode(quantized.codes)  # (B, h*w, Dt)
        rec = cosine_loss(reconstruction, target.flatten(1, 2))
        loss = quantized.loss + rec
        return ModelOutput(loss, {"rec": rec, "quant": quantized.loss}, quantized.stats)

    @torch.no_grad()
    def tokenize(self, images: Tensor) -> Tensor:
        """Images (B, C, size, size) in [0, 1] -> ids (B, h, w), the codebook unchanged."""
        z = F.normalize(self.encode(images), dim=-1)  # (B, h*w, code_dim) fp32
        return self.quantize.nearest(z).view(images.shape[0], *self.grid)

    def _keep_teacher(self, state: dict, prefix: str, *_args) -> None:
        if self.teacher is None:
            return
        for key, value in self.teacher.state_dict(prefix=prefix + "teacher.").items():
            state.setdefault(key, value)


def cosine_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean of 1 - cos over tokens: (B, N, D) x (B, N, D) -> scalar (fp32)."""
    return (1 - F.cosine_similarity(prediction.float(), target.float(), dim=-1)).mean()


def _drop_teacher(module: nn.Module, state: dict, prefix: str, _local_metadata) -> None:
    for key in [key for key in state if key.startswith(prefix + "teacher.")]:
        del state[key]
