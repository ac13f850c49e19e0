"""From a validated recipe to the model: geometry first (cheap, no weights), then modules.

:func:`resolve` checks everything that can be checked without building a tokenizer or loading
weights, and reports a bad combination as a one-line RecipeError naming the recipe and key.
"""

from collections.abc import Callable
from typing import Any

import attrs
import torch

from .components import DecoderContext, ImageSpec, Ordering, Target, Tokenizer, TokenSpec
from .data.fashion_mnist import FashionMNIST
from .encoder import Encoder, create_encoder_vit, default_taps
from .errors import ArvisionError, RecipeError
from .model import ARModel
from .plan import SegmentLayout
from .plugins import Plugins, get_plugins
from .recipe import Recipe

__all__ = ["Blueprint", "build_model", "build_tokenizer", "data_image_spec", "resolve"]


@attrs.frozen
class Blueprint:
    """Everything about a recipe's model that is known before building it."""

    recipe: Recipe
    source: str
    plugins: Plugins
    data_size: int
    image: ImageSpec  # the student's input
    tokens: TokenSpec
    ordering: Ordering
    target: Target
    encoder_dim: int
    depth: int
    encoder_cls: bool

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

    @property
    def taps(self) -> tuple[int, ...]:
        return self.recipe.encoder.taps or default_taps(self.depth)

    def decoder_context(self, predicts: str) -> DecoderContext:
        return DecoderContext(
            predicts=predicts, encoder_dim=self.encoder_dim,
            num_taps=len(self.taps), out_dim=self.target.output_dim,
            grid=self.grid, layout=self.layout, cls_target=self.tokens.cls,
            encoder_cls=self.encoder_cls,
        )


def data_image_spec(recipe: Recipe) -> tuple[int | None, int]:
    """(side, channels) of the images the data source yields (side None: any, resized)."""
    data = recipe.data
    if data.source == "synthetic":
        return data.synthetic.image_size, data.synthetic.channels
    if data.source == "imagefolder":
        return None, 3
    if data.source == "lmdb":
        from .data.lmdb_dataset import pack_image_spec  # reads the pack's manifest, if it is there

        return pack_image_spec(data.root, data.split)
    return FashionMNIST.image_size, FashionMNIST.channels


def _guard(source: str, key: str, make: Callable[[], Any]) -> Any:
    """Run a factory; its ValueError/TypeError becomes a one-line error naming the recipe key."""
    try:
        return make()
    except ArvisionError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0]
        if not message.startswith(f"{key}."):  # the component may already name its own key
            message = f"{key}: {message}"
        raise RecipeError(f"{source}: {message}") from None


def resolve(recipe: Recipe, source: str = "recipe", plugins: Plugins | None = None) -> Blueprint:
    plugins = plugins or get_plugins()
    data_size, channels = data_image_spec(recipe)
    enc = recipe.encoder
    channels = enc.in_chans or channels
    for key, values in (("mean", enc.mean), ("std", enc.std)):
        if len(values) not in (1, channels):
            raise RecipeError(f"{source}: encoder.{key}: expected 1 or {channels} values (one per "
                              f"channel), got {len(values)}")
    tok_reg = plugins.get("tokenizer", recipe.tokenizer.name)
    if enc.stem == "tokens" and not (enc.img_size or data_size):
        raise RecipeError(f"{source}: encoder.img_size: required with stem 'tokens' when the data "
                          f"source ({recipe.data.source}) has no fixed image size")
    if enc.stem == "tokens":
        # iGPT: one token per id, so the student grid is the tokenizer's grid, patch 1.
        tokens = _guard(source, "tokenizer", lambda: tok_reg.factory.token_spec(
            recipe.tokenizer.config, ImageSpec(enc.img_size or data_size, channels, 1)))
        if not tokens.discrete or tokens.grid[0] != tokens.grid[1]:
            raise RecipeError(f"{source}: encoder.stem: 'tokens' needs a tokenizer of ids on a "
                              f"square grid; {recipe.tokenizer.name!r} gives "
                              f"{'ids' if tokens.discrete else 'features'} on {tokens.grid}")
        img_size, patch_size = tokens.grid[0], 1
    else:
        img_size, patch_size = enc.img_size or data_size, enc.patch_size
    with torch.device("meta"):
        vit = _guard(source, "encoder", lambda: create_encoder_vit(enc, img_size, patch_size, channels))
    image = ImageSpec(vit.patch_embed.img_size[0], channels, vit.patch_embed.patch_size[0])
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
        tokens = _guard(source, "tokenizer", lambda: tok_reg.factory.token_spec(
            recipe.tokenizer.config, image))
    ord_reg = plugins.get("ordering", recipe.ordering.name)
    ordering = _guard(source, "ordering", lambda: ord_reg.factory(recipe.ordering.config,
                                                                  image.grid))
    for what, grid in (("student", image.grid), ("tokenizer", tokens.grid)):
        if not ordering.layout.divides(grid):
            raise RecipeError(
                f"{source}: ordering: {ordering.layout.rows}x{ordering.layout.cols} segments do "
                f"not divide the {what} grid {grid[0]}x{grid[1]}")
    if ordering.layout.num_segments < 2:  # the encoder reads segments 1..S-1 and predicts S
        raise RecipeError(
            f"{source}: ordering: the {image.grid[0]}x{image.grid[1]} student grid (image "
            f"{image.size} px, patch {image.patch_size}) makes a single segment: nothing to read "
            "before predicting it; use a smaller encoder.patch_size or more segments")
    target_reg = plugins.get("target", recipe.target.name)
    target = _guard(source, "target", lambda: target_reg.factory(recipe.target.config, tokens))
    return Blueprint(recipe, source, plugins, data_size, image, tokens, ordering, target,
                     vit.embed_dim, depth, vit.cls_token is not None)


def build_tokenizer(blueprint: Blueprint) -> Tokenizer:
    recipe = blueprint.recipe
    registration = blueprint.plugins.get("tokenizer", recipe.tokenizer.name)
    return _guard(blueprint.source, "tokenizer",
                  lambda: registration.factory(recipe.tokenizer.config, blueprint.image))


def build_model(blueprint: Blueprint, with_tokenizer: bool = True) -> ARModel:
    """Build the modules on the current default device (``torch.device('meta')`` for checks).

    ``with_tokenizer=False`` leaves the (possibly large, downloaded) tokenizer out; the model then
    needs precomputed tokens.
    """
    recipe, source, plugins = blueprint.recipe, blueprint.source, blueprint.plugins
    tokenizer = build_tokenizer(blueprint) if with_tokenizer else None
    vocab = blueprint.tokens.dim if recipe.encoder.stem == "tokens" else None
    encoder = _guard(source, "encoder", lambda: Encoder(
        recipe.encoder, blueprint.image.size, blueprint.image.patch_size, blueprint.image.channels,
        vocab))
    decoders = {}
    for index, table in enumerate(recipe.decoders):
        registration = plugins.get("decoder", table.name)
        context = blueprint.decoder_context(table.predicts)
        decoder = _guard(source, f"decoders[{index}]",
                         lambda r=registration, t=table, c=context: r.factory(t.config, c))
        decoders[table.loss_key] = (table, decoder)
    if not any(decoder.reads_final_output for _, decoder in decoders.values()):
        encoder.vit.norm.requires_grad_(False)  # unused: keep it out of the optimiser (and DDP)
    return ARModel(tokenizer, blueprint.tokens, blueprint.ordering, encoder, decoders,
                   blueprint.target)
