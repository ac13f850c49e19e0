"""Weights in and out: D-iGPT's released checkpoint into arvision, arvision's encoder out to timm.

**D-iGPT** (OliverRensu/D-iGPT, ``DiGPT_torch/models_digpt.py`` with ``vit.py`` and
``util/pos_embed.py``): the pretraining checkpoint holds the student (``model``: patch embedding,
ViT blocks, two decoders) but no teacher. Compared line by line with the released files; the
quirks, and what the conversion does with each:

- **The decoders' memories are swapped.** ``forward_encoder`` returns ``x_kd, x_ar, ...`` and
  ``forward`` unpacks that as ``latent_ar, latent_kd, ...``. So the generative decoder
  (``ar_blocks``, ``ar_norm``, ``ar_pred``) reads the memory made by ``kd_enc_norm`` +
  ``kd_enc2dec``, and the discriminative one (``kd_*``) the memory of ``ar_enc_norm`` +
  ``ar_enc2dec``. The conversion maps the memory as the code uses it, not by name:
  ``decoders.<generative>.memory`` <- ``kd_enc_*``, ``decoders.<discriminative>.memory`` <-
  ``ar_enc_*`` (:data:`_MEMORY_OF`).
- ``ar_*`` is the generative decoder (``predicts = "next"``: its queries carry the positions of
  segments 2..4), ``kd_*`` the discriminative one (``"visible"``: segments 1..3);
  ``ar_token``/``ar_norm``/``ar_pred`` become ``query``/``norm``/``head``.
- CLS is last in the encoder sequence and in the decoder queries (arvision: first). Attention does
  not care where CLS sits as long as the masks agree, so no weight changes for it. The additive
  mask buffer ``mask`` (a 3-segment lower-triangular block mask, reflect-padded by one row and
  column: CLS sees everything, only the last visible segment sees CLS, the same mask for encoder
  self-attention and decoder self- and cross-attention) is dropped: arvision builds the same
  boolean mask from the plan.
- ``{ar,kd}_enc_norm`` is ``ModuleList([nn.LayerNorm(dim)] * 4)``: one LayerNorm shared by the
  four taps, with LayerNorm's default eps 1e-5 (every other norm is ``norm_layer``, eps 1e-6); its
  state dict repeats it under ``.0`` .. ``.3``. Each copy becomes one of arvision's per-tap norms
  (only ``.0`` present is accepted too, and fills all four). The recipe must say
  ``memory_norm_eps = 1e-5`` and ``norm_eps = 1e-6`` on both decoders (checked).
- ``{ar,kd}_enc2dec`` output is read as ``reshape(B, L, dim, depth)[..., i]``: row ``j*depth + i``
  is layer i's feature j (interleaved). arvision chunks contiguously (row ``i*dim + j``), so the
  rows of the weight and bias are permuted.
- The taps are blocks 6, 8, 10, 12 literally (even for ViT-L), and there is no final encoder norm:
  ``encoder.vit.norm`` (unused by transformer decoders) is set to the identity LayerNorm.
- ``pos_embed`` and ``decoder_pos_embed`` are fixed sin-cos tables in MAE's layout (sin/cos of the
  column, then of the row), not timm's: both are copied. They are gathered with the same segment
  permutation as the tokens. The decoder table's row 0 is added to the CLS query; arvision's CLS
  query has no position, so that row must be zero (it is, for MAE's sin-cos with
  ``cls_token=True``); the encoder's row 0 is added to ``cls_token`` as timm does.
- Attention: ``q k^T * head_dim**-0.5 + mask``, softmax, biases on qkv, q, kv and proj (timm's
  Attention and arvision's CrossAttention compute the same); the cross-attention reshapes its
  memory with the query length, so memory and queries are both 3 segments + CLS. MLP: fc1, exact
  GELU, fc2 (ratio 4).
- The loss resamples each 7x7 predicted segment to the teacher's 8x8 cell (``F.interpolate``
  bilinear, ``align_corners`` False), L2-normalises prediction and target and averages
  ``2 - 2 cos`` over the 3 x 64 + 1 (CLS) tokens; the two losses are summed 1:1 (arvision's
  ``cosine`` target and ``resample_segments``).
- Geometry is literal in the released model (7, 49, 64, 16, 1024 in ``raster``,
  ``forward_loss`` and ``forward``, and ``ar_pred``/``kd_pred`` output 1024): a checkpoint fits
  only the 224/16 student with a 16x16x1024 (+ CLS) teacher, which the recipe states.
- Not visible in shapes, so taken from the recipe: attention heads (ViT-B: 12, decoder: 32).

"""

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from .build import Blueprint, build_model, resolve
from .checkpoint import read_weights_only
from .errors import CheckpointError, RecipeError, listed
from .recipe import DecoderTable, Recipe

__all__ = ["DIGPT_TAPS", "convert_digpt_official", "load_digpt_official"]

DIGPT_TAPS = (6, 8, 10, 12)
_ROLES = {"next": "ar", "visible": "kd"}  # arvision role -> reference prefix
#: reference decoder prefix -> the prefix of the memory projection its decoder actually reads
_MEMORY_OF = {"ar": "kd", "kd": "ar"}
#: LayerNorm epsilons of the released model: decoder norms, and the tap norms (LayerNorm default)
DIGPT_NORM_EPS, DIGPT_MEMORY_NORM_EPS = 1e-6, 1e-5
_IGNORED = {"mask"}  # the reference's additive mask buffer: arvision derives its own
#: The D-iGPT name of each part of a transformer decoder (the roles of its ``PARTS``); ``{p}`` is
#: the decoder's prefix (ar, kd), ``{m}`` that of the memory it reads (:data:`_MEMORY_OF`).
_DIGPT_PARTS = {
    "query": "{p}_token", "positions": "decoder_pos_embed", "memory_norms": "{m}_enc_norm",
    "memory_projection": "{m}_enc2dec", "layers": "{p}_blocks", "final_norm": "{p}_norm",
    "head": "{p}_pred",
}
#: The D-iGPT name of each part of a decoder layer (the roles of its ``BLOCK_PARTS``).
_DIGPT_BLOCK_PARTS = {
    "self_attention_norm": "norm1", "self_attention_qkv": "attn1.qkv",
    "self_attention_proj": "attn1.proj", "cross_attention_query_norm": "norm2_1",
    "cross_attention_memory_norm": "norm2_2", "cross_attention_q": "attn2.q",
    "cross_attention_kv": "attn2.kv", "cross_attention_proj": "attn2.proj", "mlp_norm": "norm2",
    "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2",
}


def load_digpt_official(path: str | Path) -> dict[str, Tensor]:
    """The weights of a D-iGPT checkpoint file (``{"model": ..., "args": Namespace, ...}`` as its
    ``misc.save_model`` writes, or a bare state dict), read without executing code."""
    path = Path(path)
    data = read_weights_only(path, "checkpoint", allow=[argparse.Namespace])  # its training args
    return _unwrap(data, str(path))


def _unwrap(data: Any, name: str) -> dict[str, Tensor]:
    """The state dict under ``model`` (or the top level), without a DDP ``module.`` prefix."""
    state = data.get("model", data) if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping) or not state or \
            not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f"{name}: expected a state dict of tensors, at the top level or "
                              "under 'model'")
    if all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def convert_digpt_official(state: Mapping[str, Any], recipe: Recipe, *, source: str = "recipe",
                           name: str = "D-iGPT checkpoint") -> dict[str, Tensor]:
    """An official D-iGPT state dict (or checkpoint dict) -> the ARModel state dict of ``recipe``.

    The recipe decides the architecture; the checkpoint must fit it exactly. A recipe that cannot
    hold D-iGPT is a RecipeError; missing, unexpected or mis-shaped keys are one CheckpointError
    line naming them (``source`` and ``name`` head the messages).
    """
    weights = _unwrap(state, name)
    blueprint = resolve(recipe, source)
    _check_recipe(blueprint)
    tables = {table.loss_key: table for table in recipe.decoders}
    _check_depths(weights, blueprint, name)
    with torch.device("meta"):  # shapes only: nothing allocated
        expected = build_model(blueprint, with_tokenizer=False).state_dict()
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: dict[str, None] = {}
    shapes: dict[str, str] = {}
    for key, like in expected.items():
        part = _decoder_part(key, tables)
        ref = _reference_key(key, part)
        if ref is None:  # no counterpart: the unused final encoder norm, as the identity
            converted[key] = torch.ones(like.shape) if key.endswith("weight") else torch.zeros(like.shape)
            continue
        ref = _shared_norm(ref, weights)
        if ref not in weights:
            missing[ref] = None
            continue
        used.add(ref)
        value, want = weights[ref], _reference_shape(part, tuple(like.shape))
        if tuple(value.shape) != want:
            shapes[ref] = f"{ref} ({list(value.shape)} in the checkpoint, {list(want)} from the recipe)"
            continue
        converted[key] = _adapt(part, ref, value, name)
    unexpected = sorted(set(weights) - used - _IGNORED)
    problems = [f"{label} {listed(keys)}" for label, keys in (
        ("missing keys", list(missing)), ("unexpected keys", unexpected),
        ("shape mismatch", list(shapes.values()))) if keys]
    if problems:
        raise CheckpointError(f"{name} does not fit {source}: {'; '.join(problems)}")
    return converted


def _check_recipe(blueprint: Blueprint) -> None:
    """What the recipe must say to hold D-iGPT."""
    recipe, source = blueprint.recipe, blueprint.source
    enc = recipe.encoder

    def fail(key: str, message: str) -> RecipeError:
        return RecipeError(f"{source}: {key}: {message} (converting D-iGPT)")

    if enc.stem != "patch":
        raise fail("encoder.stem", "D-iGPT embeds pixel patches; set stem = 'patch'")
    if not blueprint.encoder_cls:
        raise fail("encoder.class_token", "D-iGPT's encoder has a CLS token; set class_token = true")
    if enc.pos_embed != "sincos":
        raise fail("encoder.pos_embed", "D-iGPT's positions are fixed sin-cos; set pos_embed = 'sincos'")
    if blueprint.taps != DIGPT_TAPS:
        raise fail("encoder.taps", f"D-iGPT's decoders read blocks {list(DIGPT_TAPS)}, the recipe "
                   f"taps {list(blueprint.taps)}; set taps = {list(DIGPT_TAPS)}")
    layout = blueprint.layout
    if (layout.rows, layout.cols) != (2, 2):
        raise fail("ordering", f"D-iGPT cuts the grid into 2x2 segments, the recipe into "
                   f"{layout.rows}x{layout.cols}")
    roles = {table.loss_key: table.predicts for table in recipe.decoders}
    if sorted(roles.values()) != ["next", "visible"] or \
            any(table.name != "transformer" for table in recipe.decoders):
        found = ", ".join(f"{table.name} predicting {table.predicts!r}" for table in recipe.decoders)
        raise fail("decoders", "D-iGPT has two transformer decoders, one predicting 'next' (ar_*) "
                   f"and one 'visible' (kd_*); the recipe has {found}")
    for index, table in enumerate(recipe.decoders):
        config = table.config
        memory_eps = config.norm_eps if config.memory_norm_eps is None else config.memory_norm_eps
        if (config.norm_eps, memory_eps) != (DIGPT_NORM_EPS, DIGPT_MEMORY_NORM_EPS):
            raise fail(f"decoders[{index}]", f"D-iGPT's decoder norms use eps {DIGPT_NORM_EPS} and "
                       f"its tap norms {DIGPT_MEMORY_NORM_EPS}; the recipe has norm_eps "
                       f"{config.norm_eps} and memory_norm_eps {memory_eps}; set norm_eps = "
                       f"{DIGPT_NORM_EPS} and memory_norm_eps = {DIGPT_MEMORY_NORM_EPS}")


def _check_depths(weights: Mapping[str, Tensor], blueprint: Blueprint, name: str) -> None:
    """Block counts first: a depth mismatch would otherwise read as dozens of key errors."""
    counts = [("blocks", blueprint.depth, "encoder.depth")]
    for index, table in enumerate(blueprint.recipe.decoders):
        counts.append((f"{_ROLES[table.predicts]}_blocks", table.config.depth,
                       f"decoders[{index}].depth"))
    for prefix, want, key in counts:
        found = {int(m.group(1)) for k in weights if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
        if len(found) != want:
            raise CheckpointError(f"{name}: {prefix}.*: {len(found)} blocks in the checkpoint, "
                                  f"{want} from {blueprint.source} ({key})")


@attrs.frozen
class _DecoderPart:
    """A decoder's state-dict key read through the decoder's ``PARTS``: the table of the decoder,
    the role of the part holding the key, and the rest of the key after the part's path."""

    table: DecoderTable
    role: str
    rest: str

    @property
    def prefix(self) -> str:
        """The reference's prefix of this decoder (ar, kd)."""
        return _ROLES[self.table.predicts]


def _decoder_part(key: str, tables: Mapping[str, DecoderTable]) -> _DecoderPart | None:
    """``decoders.<loss key>.<path>`` as a :class:`_DecoderPart` (None for the encoder's keys)."""
    if not key.startswith("decoders."):
        return None
    _, loss_key, path = key.split(".", 2)
    table = tables[loss_key]
    for role, where in table.registration.factory.PARTS.items():
        if path == where or path.startswith(f"{where}."):
            return _DecoderPart(table, role, path.removeprefix(where).removeprefix("."))
    raise CheckpointError(f"arvision key {key} has no D-iGPT counterpart")


def _reference_key(key: str, part: _DecoderPart | None) -> str | None:
    """The reference's name for an arvision key (None: the final encoder norm, which it lacks)."""
    if part is None:
        rest = key.removeprefix("encoder.vit.")
        return None if rest.startswith("norm.") else rest  # timm's ViT names = the reference's
    name = _DIGPT_PARTS[part.role].format(p=part.prefix, m=_MEMORY_OF[part.prefix])
    if part.role == "layers":  # N.<module of the layer>.<parameter>
        index, inner = part.rest.split(".", 1)
        module, parameter = inner.rsplit(".", 1)
        block_parts = part.table.registration.factory.BLOCK_PARTS
        role = next(role for role, where in block_parts.items() if where == module)
        return f"{name}.{index}.{_DIGPT_BLOCK_PARTS[role]}.{parameter}"
    return f"{name}.{part.rest}" if part.rest else name


def _shared_norm(ref: str, weights: Mapping[str, Tensor]) -> str:
    """``*_enc_norm.K.*``: one shared LayerNorm, saved four times or (deduplicated) once."""
    found = re.fullmatch(r"(\w+_enc_norm)\.(\d+)\.(\w+)", ref)
    if found and ref not in weights and f"{found[1]}.0.{found[3]}" in weights and \
            not any(key.startswith(f"{found[1]}.1.") for key in weights):
        return f"{found[1]}.0.{found[3]}"
    return ref


def _reference_shape(part: _DecoderPart | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    if part is not None and part.role == "positions":  # (1, h*w, dim) <- (1, 1 + h*w, dim)
        return (shape[0], shape[1] + 1, shape[2])  # a CLS row first
    return shape


def _adapt(part: _DecoderPart | None, ref: str, value: Tensor, name: str) -> Tensor:
    value = value.detach().float().clone()
    role = part.role if part is not None else None
    if role == "positions":
        if value[0, 0].abs().max() > 0:
            raise CheckpointError(f"{name}: {ref}[0, 0] (the position added to the CLS query) is "
                                  "not zero; arvision's CLS query has no position")
        return value[:, 1:]
    if role == "memory_projection":  # rows j*depth + i (interleaved) -> i*dim + j (contiguous)
        depth = part.table.config.depth
        return value.reshape(-1, depth, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
    return value
