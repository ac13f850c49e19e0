"""iGPT's palette tokenizer: the nearest palette colour of every pixel, one id per pixel; and the
``arvision tokenizer fit-palette`` command that fits a palette (:mod:`.colour_palette`)."""

from pathlib import Path

import attrs
from torch import Tensor

from arvision import hookimpl
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import positive, setting

from .colour_palette import load_palette, quantize
from .pixels import resize
from .tokenizer_commands import tokenizer_group

__all__ = ["PaletteConfig", "PaletteTokenizer"]


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
    register("palette", PaletteTokenizer, PaletteConfig)


@hookimpl
def register_commands(app):
    from .palette_command import fit_palette_command

    tokenizer_group(app).command("fit-palette")(fit_palette_command)
