"""AIM's pixel tokenizer: each patch's (normalised) pixels as one feature token."""

import attrs
import torch.nn.functional as F
from torch import Tensor

from arvision import hookimpl
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import positive, setting

__all__ = ["PixelsConfig", "PixelsTokenizer", "resize"]


def resize(images: Tensor, size: int) -> Tensor:
    """Square resize with antialiasing (a no-op at the same size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


@attrs.frozen
class PixelsConfig:
    patch_size: int | None = setting(None, "pixels per patch side (default: the encoder's)",
                                     validator=positive)
    size: int | None = setting(None, "resize images to this side first (default: the encoder's "
                               "input size)", validator=positive)
    normalize: bool = setting(True, "normalise each patch to zero mean, unit variance (AIM, MAE)")


class PixelsTokenizer(Tokenizer):
    """Each patch's pixels as one feature token (B, h, w, p*p*C)."""

    @classmethod
    def token_spec(cls, config: PixelsConfig, image: ImageSpec) -> TokenSpec:
        size, patch = config.size or image.size, config.patch_size or image.patch_size
        if size % patch:
            raise ValueError(f"tokenizer.patch_size {patch} does not divide the image size {size}")
        return TokenSpec(grid=(size // patch, size // patch), dim=patch * patch * image.channels,
                         discrete=False)

    def forward(self, images: Tensor) -> Tokens:
        h, w = self.spec.grid
        x = resize(images, self.config.size or self.image.size)  # (B, C, H, W)
        patch = x.shape[-1] // w
        x = x.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, h, w, p, p)
        x = x.permute(0, 2, 3, 4, 5, 1).reshape(x.shape[0], h, w, -1)  # (B, h, w, p*p*C)
        if self.config.normalize:
            mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
            x = (x - mean) / (var + 1e-6).sqrt()
        return Tokens(x)


@hookimpl
def register_tokenizers(register):
    register("pixels", PixelsTokenizer, PixelsConfig)
