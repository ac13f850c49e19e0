"""From a validated recipe to the model: geometry first (cheap, no weights), then modules.

:func:`resolve` checks everything that can be checked without building a tokenizer or loading
weights, and reports a bad combination as a one-line RecipeError naming the recipe and key. The
:class:`Blueprint` it returns holds what the rest is built from: the geometry, the encoder's taps,
and the components as the recipe's tables registered them (looked up once, when it was read).
"""

import contextlib
from collections.abc import Iterator

import attrs
import torch

from .components import DecoderContext, ImageSpec, Ordering, Target, Tokenizer, TokenSpec
from .data.sources import image_spec
from .errors import ArvisionError, RecipeError
from .model import ARModel, DecoderRole, Encoder, default_taps
from .model.encoder import create_encoder_vit
from .model.vit import channel_stat
from .plan import SegmentLayout
from .recipe import Recipe

__all__ = ["Blueprint", "as_recipe_error", "build_model", "build_tokenizer", "resolve"]


@attrs.frozen
class Blueprint:
    """Everything about a recipe's model that is known before building it."""

    recipe: Recipe
    source: str  # where the recipe came from, for error messages
    data_size: int | None  # the data's image side (None: any, resized)
    image: ImageSpec  # the student's input
    tokens: TokenSpec
    ordering: Ordering
    target: Target
    encoder_dim: int
    depth: int
    encoder_cls: bool
    taps: tuple[int, ...]  # 1-based encoder blocks the decoders read

    @property
    def layout(self) -> SegmentLayout:
        return self.ordering.layout

    @property
    def grid(self) -> tuple[int, int]:
        return self.image.grid

    @property
    def num_segments(self) -> int:
        return self.layout.num_segments

    @property
    def encoder_tokens(self) -> int:
        """Encoder sequence: segments 1..S-1 plus CLS."""
        return (self.num_segments - 1) * self.layout.tokens_per_segment(self.grid) + self.encoder_cls

    @property
    def targets_per_decoder(self) -> int:
        return (self.num_segments - 1) * self.layout.tokens_per_segment(self.tokens.grid) + \
            self.tokens.cls

    def decoder_context(self, predicts: str) -> DecoderContext:
        return DecoderContext(
            predicts=predicts, encoder_dim=self.encoder_dim,
            num_taps=len(self.taps), out_dim=self.target.output_dim,
            grid=self.grid, layout=self.layout, cls_target=self.tokens.cls,
            encoder_cls=self.encoder_cls,
        )


@contextlib.contextmanager
def as_recipe_error(source: str, key: str) -> Iterator[None]:
    """A ValueError/TypeError raised inside (by a component, by timm) becomes a one-line
    RecipeError naming the recipe ``source`` and ``key``."""
    try:
        yield
    except ArvisionError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0]
        if not message.startswith(f"{key}."):  # the component may already name its own key
            message = f"{key}: {message}"
        raise RecipeError(f"{source}: {message}") from None


def resolve(recipe: Recipe, source: str = "recipe") -> Blueprint:
    data_size, channels = image_spec(recipe.data)
    enc = recipe.encoder
    channels = enc.in_chans or channels
    with as_recipe_error(source, "encoder"):
        for key in ("mean", "std"):  # one value or one per channel
            channel_stat(getattr(enc, key), channels, f"encoder.{key}")
    tokenizer = recipe.tokenizer.registration.factory
    if enc.stem == "tokens" and not (enc.img_size or data_size):
        raise RecipeError(f"{source}: encoder.img_size: required with stem 'tokens' when the data "
                          f"source ({recipe.data.source}) has no fixed image size")
    if enc.stem == "tokens":
        # iGPT: one token per id, so the student grid is the tokenizer's grid, patch 1.
        with as_recipe_error(source, "tokenizer"):
            tokens = tokenizer.token_spec(recipe.tokenizer.config,
                                          ImageSpec(enc.img_size or data_size, channels, 1))
        if not tokens.discrete or tokens.grid[0] != tokens.grid[1]:
            raise RecipeError(f"{source}: encoder.stem: 'tokens' needs a tokenizer of ids on a "
                              f"square grid; {recipe.tokenizer.name!r} gives "
                              f"{'ids' if tokens.discrete else 'features'} on {tokens.grid}")
        img_size, patch_size = tokens.grid[0], 1
    else:
        img_size, patch_size = enc.img_size or data_size, enc.patch_size
    with as_recipe_error(source, "encoder"), torch.device("meta"):
        vit = create_encoder_vit(enc, img_size, patch_size, channels)
    image = ImageSpec(vit.patch_embed.img_size[0], channels, vit.patch_embed.patch_size[0],
                      vit.embed_dim)
    if enc.pos_embed == "sincos" and vit.embed_dim % 4:
        default = "" if enc.embed_dim else f" (the default of {enc.name})"
        raise RecipeError(f"{source}: encoder.pos_embed: 'sincos' needs encoder.embed_dim divisible "
                          f"by 4 (a sine and a cosine of row and column), got {vit.embed_dim}"
                          f"{default}; set encoder.embed_dim, or pos_embed = 'learned'")
    depth = len(vit.blocks)
    if any(not 1 <= tap <= depth for tap in enc.taps):
        raise RecipeError(f"{source}: encoder.taps: expected block numbers in 1..{depth}, got "
                          f"{list(enc.taps)}")
    if enc.stem == "patch":
        with as_recipe_error(source, "tokenizer"):
            tokens = tokenizer.token_spec(recipe.tokenizer.config, image)
    with as_recipe_error(source, "ordering"):
        ordering = recipe.ordering.registration.factory(recipe.ordering.config, image.grid)
    _check_layout(ordering.layout, image, tokens.grid, source)
    with as_recipe_error(source, "target"):
        target = recipe.target.registration.factory(recipe.target.config, tokens)
    return Blueprint(recipe, source, data_size, image, tokens, ordering, target, vit.embed_dim,
                     depth, vit.cls_token is not None, enc.taps or default_taps(depth))


def _check_layout(layout: SegmentLayout, image: ImageSpec, token_grid: tuple[int, int],
                  source: str) -> None:
    """The segments divide both grids, and there are at least two of them."""
    for what, grid in (("student", image.grid), ("tokenizer", token_grid)):
        if not layout.divides(grid):
            raise RecipeError(
                f"{source}: ordering: {layout.rows}x{layout.cols} segments do not divide the "
                f"{what} grid {grid[0]}x{grid[1]}")
    if layout.num_segments < 2:  # the encoder reads segments 1..S-1 and predicts S
        raise RecipeError(
            f"{source}: ordering: the {image.grid[0]}x{image.grid[1]} student grid (image "
            f"{image.size} px, patch {image.patch_size}) makes a single segment: nothing to read "
            "before predicting it; use a smaller encoder.patch_size or more segments")


def build_tokenizer(blueprint: Blueprint) -> Tokenizer:
    table = blueprint.recipe.tokenizer
    with as_recipe_error(blueprint.source, "tokenizer"):
        return table.registration.factory(table.config, blueprint.image)


def build_model(blueprint: Blueprint, with_tokenizer: bool = True) -> ARModel:
    """Build the modules on the current default device (``torch.device('meta')`` for checks).

    ``with_tokenizer=False`` leaves the (possibly large, downloaded) tokenizer out; the model then
    needs precomputed tokens.
    """
    recipe, source, image = blueprint.recipe, blueprint.source, blueprint.image
    tokenizer = build_tokenizer(blueprint) if with_tokenizer else None
    vocab = blueprint.tokens.dim if recipe.encoder.stem == "tokens" else None
    with as_recipe_error(source, "encoder"):
        encoder = Encoder(recipe.encoder, image.size, image.patch_size, image.channels,
                          blueprint.taps, vocab)
    decoders = {}
    for index, table in enumerate(recipe.decoders):
        with as_recipe_error(source, f"decoders[{index}]"):
            decoder = table.registration.factory(table.config,
                                                 blueprint.decoder_context(table.predicts))
        decoders[table.loss_key] = (DecoderRole(table.predicts, table.weight), decoder)
    if not any(decoder.reads_final_output for _, decoder in decoders.values()):
        encoder.vit.norm.requires_grad_(False)  # unused: keep it out of the optimiser (and DDP)
    with as_recipe_error(source, "tokenizer"):  # a tokenizer that reads the student checks it
        return ARModel(tokenizer, blueprint.tokens, blueprint.ordering, encoder, decoders,
                       blueprint.target, prefix_attention=recipe.ordering.prefix_attention)
