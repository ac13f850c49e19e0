"""The student's own embeddings as targets (NEPA): autoregressive pretraining with no teacher.

NEPA (Xu et al., arXiv 2512.16922) trains a causal ViT to predict the embedding of the next patch
from the embeddings before it; the targets are the model's own patch embeddings with the
gradient stopped (``z.detach()``), scored by negative cosine similarity, with no pixel decoder.
Here that is the tokenizer ``student`` with the ``cosine`` target (2 - 2 cos: the same gradient
as -cos) and a ``next`` decoder::

    [tokenizer]               [target]              [[decoders]]
    name = "student"          name = "cosine"       name = "linear"
                                                    predicts = "next"

- ``source = "embedding"``: the student's patch embedding of each patch, before the position is
  added (a position would make part of every target predictable from the place alone). The
  targets move as the student learns; no gradient flows into them.
- ``source = "ema"``: the output of block ``layer`` (default: the final normed output) of the
  exponential moving average of the encoder that the trainer keeps (``train.ema`` sets its
  decay), reading the whole image with full attention, as BYOL- and data2vec-style teachers do.

Unlike NEPA, a decoder sits between the encoder and the loss (``linear`` is the lightest; NEPA
compares the encoder's output directly). The tokenizer runs inside the model's step, so it cannot
fill a target cache.
"""

from typing import Literal

import attrs
import torch.nn.functional as F
from torch import Tensor, nn

from arvision import hookimpl
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import positive, setting

__all__ = ["StudentConfig", "StudentTokenizer"]


@attrs.frozen
class StudentConfig:
    source: Literal["embedding", "ema"] = setting(
        "embedding", "'embedding': the student's own patch embeddings (NEPA); 'ema': block "
        "'layer' of the EMA of the encoder (needs train.ema)")
    layer: int | None = setting(None, "source 'ema': the 1-based block whose output is the "
                                "target (default: the final normed output)", validator=positive)
    normalize: bool = setting(False, "layer-normalise each target token (no weights)")


class StudentTokenizer(Tokenizer):
    """The student's own patch embeddings (or its EMA's block output), gradient stopped."""

    def __init__(self, config: StudentConfig, image: ImageSpec) -> None:
        super().__init__(config, image)
        self._encoders: dict[str, nn.Module] = {}  # a plain dict: not submodules, not frozen

    @property
    def needs_ema(self) -> bool:
        return self.config.source == "ema"

    @classmethod
    def token_spec(cls, config: StudentConfig, image: ImageSpec) -> TokenSpec:
        if image.encoder_dim is None:
            raise ValueError("'student' predicts the student's patch embeddings and needs their "
                             "width: it works with encoder.stem = 'patch'")
        if config.layer is not None and config.source != "ema":
            raise ValueError("tokenizer.layer: only for source 'ema' (the embedding has no "
                             "blocks)")
        return TokenSpec(grid=image.grid, dim=image.encoder_dim, discrete=False)

    def attach(self, encoder: nn.Module, ema: nn.Module | None = None) -> None:
        if self.config.layer is not None and self.config.layer > encoder.depth:
            raise ValueError(f"tokenizer.layer: expected a block in 1..{encoder.depth}, got "
                             f"{self.config.layer}")
        self._encoders["student"] = encoder
        if ema is not None:
            self._encoders["ema"] = ema

    def forward(self, images: Tensor) -> Tokens:
        """Images (B, C, H, W) in [0, 1] -> the targets (B, h, w, D), float32."""
        if "student" not in self._encoders:
            raise ValueError("'student' reads the student's encoder: it runs inside the model "
                             "and cannot run alone (nor fill a target cache)")
        if self.config.source == "embedding":
            encoder = self._encoders["student"]
            x = encoder.vit.patch_embed((images - encoder.mean) / encoder.std)  # (B, N, D)
        else:
            x = self._ema_tokens(images)  # (B, N, D)
        if self.config.normalize:
            x = F.layer_norm(x.float(), x.shape[-1:])
        h, w = self.spec.grid
        return Tokens(x.float().reshape(x.shape[0], h, w, -1))

    def _ema_tokens(self, images: Tensor) -> Tensor:
        ema = self._encoders.get("ema")
        if ema is None:
            raise ValueError("tokenizer.source: 'ema' reads the EMA of the encoder, and none is "
                             "attached; set train.ema (its decay)")
        layer = self.config.layer or ema.depth
        (x,) = ema.features(images, (layer,))  # (B, P + N, D), full attention
        if self.config.layer is None:
            x = ema.vit.norm(x)
        return x[:, ema.num_prefix:]


@hookimpl
def register_tokenizers(register):
    register("student", StudentTokenizer, StudentConfig)
