"""VQ-KD training recipes: a ``[vqkd]`` table (codebook, decoder, ``[vqkd.teacher]``) beside
``[encoder]``, ``[data]``, ``[train]`` and ``[run]``.

``[data]``, ``[train]`` and ``[run]`` are arvision's own tables (the same engine as pretraining:
AdamW, warmup + cosine, bf16, accumulation, checkpoints, exact resume, torchrun). ``[encoder]``
is BEiT v2's ViT at any size (defaults: ViT-B/16, the released tokenizers); ``[vqkd.teacher]``
is any feature tokenizer arvision can build (``timm``: a checkpoint trained here; ``clip``).
Every problem is a one-line :class:`~arvision.errors.RecipeError` naming the file and the key.
"""

from pathlib import Path
from typing import Any, ClassVar

import attrs

from arvision.components import ImageSpec, TokenSpec
from arvision.config import non_negative, positive, probability, setting
from arvision.data.sources import image_spec
from arvision.errors import RecipeError
from arvision.recipe import (
    DataConfig,
    LogConfig,
    RunConfig,
    TokenizerTable,
    TrainConfig,
    read_recipe_data,
    recipe_converter,
    structure_config,
)

__all__ = ["VQKDEncoderConfig", "VQKDGeometry", "VQKDRecipe", "VQKDTrainConfig", "is_vqkd",
           "load_vqkd_recipe", "resolve_vqkd", "structure_vqkd_recipe", "tokenizer_table"]


@attrs.frozen
class VQKDEncoderConfig:
    """The VQ-KD encoder: BEiT v2's ViT (mean-pooling layout, absolute positions) at any size;
    its input channels are the data's."""

    img_size: int | None = setting(None, "input side in pixels (default: the data's image size, "
                                   "else 224)", validator=positive)
    patch_size: int = setting(16, "patch size: one code per patch", validator=positive)
    embed_dim: int = setting(768, "token width", validator=positive)
    depth: int = setting(12, "number of blocks", validator=positive)
    num_heads: int = setting(12, "attention heads", validator=positive)
    drop_path: float = setting(0.0, "stochastic depth rate", validator=non_negative)


@attrs.frozen(kw_only=True)
class VQKDTrainConfig:
    """The codebook, the decoder and the teacher of a VQ-KD tokenizer (BEiT v2)."""

    num_codes: int = setting(8192, "codebook size (the vocabulary)", validator=positive)
    code_dim: int = setting(32, "width of a code", validator=positive)
    decay: float = setting(0.99, "EMA decay of the codebook (1: codes stay where k-means put them)",
                           validator=probability)
    beta: float = setting(1.0, "weight of the commitment loss mse(z_q.detach(), z)",
                          validator=non_negative)
    kmeans_init: bool = setting(True, "start the codebook by spherical k-means of the first "
                                "batch's vectors (false: random unit codes)")
    kmeans_iterations: int = setting(10, "Lloyd iterations of that k-means", validator=positive)
    dead_after: int | None = setting(None, "restart a code unused for this many batches on a random "
                                     "vector of the batch (unset: never, as BEiT v2)",
                                     validator=positive)
    usage_window: int = setting(100, "codebook/used counts the codes picked in the last N batches",
                                validator=positive)
    decoder_depth: int = setting(3, "decoder blocks (the released tokenizers: 1 or 3)",
                                 validator=positive)
    decoder_dim: int | None = setting(None, "decoder width (default: encoder.embed_dim)",
                                      validator=positive)
    decoder_heads: int | None = setting(None, "decoder attention heads (default: encoder.num_heads)",
                                        validator=positive)
    teacher: TokenizerTable = setting(
        help="[vqkd.teacher]: the tokenizer whose patch features the decoder reconstructs (cosine): "
        "`name` plus that tokenizer's keys, e.g. timm with a checkpoint trained here, or clip")


@attrs.frozen
class VQKDRecipe:
    """A VQ-KD tokenizer training run."""

    KIND: ClassVar[str] = "vqkd"  # what its checkpoints are (a run resumes only its own kind)
    vqkd: VQKDTrainConfig
    encoder: VQKDEncoderConfig = attrs.Factory(VQKDEncoderConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    train: TrainConfig = attrs.Factory(TrainConfig)
    run: RunConfig = attrs.Factory(RunConfig)
    log: LogConfig = attrs.Factory(LogConfig)  # experiment trackers, as in any run


@attrs.frozen
class VQKDGeometry:
    """What a VQ-KD recipe builds, derived from it without weights."""

    image: ImageSpec  # the encoder's input: size, channels (the data's), patch size
    teacher: TokenSpec  # the teacher's features: grid (= the encoder's) and width
    decoder_dim: int
    decoder_heads: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.image.grid


def is_vqkd(data: dict[str, Any]) -> bool:
    """Whether recipe tables describe VQ-KD training (a ``[vqkd]`` table)."""
    return "vqkd" in data


def structure_vqkd_recipe(data: dict[str, Any], source: str, plugins: Any) -> VQKDRecipe:
    """Validated tables (errors name ``source``); ``plugins``: the registered components."""
    recipe = structure_config(recipe_converter(plugins), data, VQKDRecipe, source)
    if recipe.train.ema is not None:
        raise RecipeError(f"{source}: train.ema: VQ-KD training keeps no EMA of the weights (its "
                          "codebook is an EMA already); remove the key")
    if recipe.data.targets:
        raise RecipeError(f"{source}: data.targets: VQ-KD training runs its teacher on the images; "
                          "remove the key")
    resolve_vqkd(recipe, source)
    return recipe


def load_vqkd_recipe(path: str | Path, overrides: list[str] = (), *, plugins: Any) -> VQKDRecipe:
    return structure_vqkd_recipe(read_recipe_data(path, overrides), str(path), plugins)


def resolve_vqkd(recipe: VQKDRecipe, source: str = "recipe") -> VQKDGeometry:
    """The geometry of ``recipe``, or a RecipeError: sizes that do not divide, a teacher of ids,
    a teacher grid other than the encoder's."""
    enc, vq = recipe.encoder, recipe.vqkd
    data_size, channels = image_spec(recipe.data)
    size = enc.img_size or data_size or 224
    if size % enc.patch_size:
        raise RecipeError(f"{source}: encoder.patch_size: {enc.patch_size} does not divide the "
                          f"image size {size} (encoder.img_size)")
    if enc.embed_dim % enc.num_heads:
        raise RecipeError(f"{source}: encoder.num_heads: {enc.num_heads} does not divide "
                          f"encoder.embed_dim {enc.embed_dim}")
    decoder_dim, decoder_heads = vq.decoder_dim or enc.embed_dim, vq.decoder_heads or enc.num_heads
    if decoder_dim % decoder_heads:
        raise RecipeError(f"{source}: vqkd.decoder_heads: {decoder_heads} does not divide the "
                          f"decoder width {decoder_dim} (vqkd.decoder_dim)")
    image = ImageSpec(size, channels, enc.patch_size)
    teacher = vq.teacher
    try:
        spec = teacher.registration.factory.token_spec(teacher.config, image)
    except ValueError as exc:
        raise RecipeError(f"{source}: vqkd.teacher: {exc}") from None
    if spec.discrete:
        raise RecipeError(f"{source}: vqkd.teacher.name: {teacher.name!r} gives ids; the decoder "
                          "reconstructs features: pick a feature teacher (timm, clip)")
    if spec.grid != image.grid:
        raise RecipeError(
            f"{source}: vqkd.teacher: its grid {_grid(spec.grid)} differs from the encoder's "
            f"{_grid(image.grid)} ({size} px / patch {enc.patch_size}); set the teacher's input "
            "size (e.g. vqkd.teacher.size) or the encoder's patch_size so that they match")
    return VQKDGeometry(image, spec, decoder_dim, decoder_heads)


def tokenizer_table(recipe: VQKDRecipe, checkpoint: Path, source: str = "recipe") -> dict[str, Any]:
    """The ``[tokenizer]`` table that loads the trained tokenizer (``vqkd``, at its sizes)."""
    image = resolve_vqkd(recipe, source).image
    enc = recipe.encoder
    return {"name": "vqkd", "checkpoint": str(checkpoint), "size": image.size,
            "patch_size": enc.patch_size, "in_chans": image.channels,
            "embed_dim": enc.embed_dim, "depth": enc.depth, "num_heads": enc.num_heads,
            "num_codes": recipe.vqkd.num_codes, "code_dim": recipe.vqkd.code_dim}


def _grid(grid: tuple[int, int]) -> str:
    return "x".join(map(str, grid))

