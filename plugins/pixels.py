"""Pixel tokenizers: iGPT's colour palette ids and AIM's (normalised) pixel patches."""

from pathlib import Path

import attrs
import torch.nn.functional as F
import typer
from torch import Tensor

from arvision import hookimpl
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import check, setting

from .palette import load_palette, quantize

__all__ = ["PaletteConfig", "PaletteTokenizer", "PixelsConfig", "PixelsTokenizer"]

positive = check(lambda v: v > 0, "a number > 0")


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


@attrs.frozen
class PaletteConfig:
    path: str = setting(help="palette file written by 'arvision tokenizer fit-palette'")
    num_colors: int = setting(512, "palette size (the vocabulary); must match the file",
                              validator=positive)
    size: int | None = setting(None, "resize images to this side: one token per pixel "
                               "(default: the encoder's input size)", validator=positive)


class PaletteTokenizer(Tokenizer):
    """iGPT: nearest palette colour of every pixel, (B, size, size) ids."""

    @classmethod
    def token_spec(cls, config: PaletteConfig, image: ImageSpec) -> TokenSpec:
        size = config.size or image.size
        return TokenSpec(grid=(size, size), dim=config.num_colors, discrete=True)

    def __init__(self, config: PaletteConfig, image: ImageSpec) -> None:
        super().__init__(config, image)
        colours, _meta = load_palette(Path(config.path))  # (K, C) in [-1, 1]
        if colours.shape != (config.num_colors, image.channels):
            raise ValueError(
                f"palette {config.path} has {colours.shape[0]} colours of {colours.shape[1]} "
                f"channels; the recipe expects {config.num_colors} of {image.channels}"
            )
        self.register_buffer("colours", colours.float())

    def forward(self, images: Tensor) -> Tokens:
        x = resize(images, self.spec.grid[0]) * 2 - 1  # (B, C, s, s) in [-1, 1]
        return Tokens(quantize(x.permute(0, 2, 3, 1), self.colours))  # (B, s, s)


@hookimpl
def register_tokenizers(register):
    register("pixels", PixelsTokenizer, PixelsConfig)
    register("palette", PaletteTokenizer, PaletteConfig)


@hookimpl
def register_commands(app):
    from .palette_command import fit_palette_command

    tokenizer = typer.Typer(help="Tokenizer tools.", no_args_is_help=True)
    tokenizer.command("fit-palette")(fit_palette_command)
    app.add_typer(tokenizer, name="tokenizer")
