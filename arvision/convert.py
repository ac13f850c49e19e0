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

**timm export**: ``encoder.vit.*`` of an arvision checkpoint is a plain timm VisionTransformer
state dict; :func:`export_timm` writes it and returns the ``timm.create_model`` call that loads it.
"""

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .build import Blueprint, build_model, data_image_spec, resolve
from .checkpoint import load_checkpoint, save_atomic
from .errors import CheckpointError, RecipeError
from .plugins import Plugins
from .recipe import Recipe, structure_recipe

__all__ = ["DIGPT_TAPS", "convert_digpt_official", "export_timm", "load_digpt_official",
           "timm_arguments", "timm_call"]

DIGPT_TAPS = (6, 8, 10, 12)
_ROLES = {"next": "ar", "visible": "kd"}  # arvision role -> reference prefix
#: reference decoder prefix -> the prefix of the memory projection its decoder actually reads
_MEMORY_OF = {"ar": "kd", "kd": "ar"}
#: LayerNorm epsilons of the released model: decoder norms, and the tap norms (LayerNorm default)
DIGPT_NORM_EPS, DIGPT_MEMORY_NORM_EPS = 1e-6, 1e-5
_IGNORED = {"mask"}  # the reference's additive mask buffer: arvision derives its own
_SHOWN = 4  # keys named per kind in an error line
#: arvision DecoderBlock module -> the reference DecoderBlock's
_DECODER_BLOCK = {
    "norm1": "norm1", "self_attn.qkv": "attn1.qkv", "self_attn.proj": "attn1.proj",
    "norm_query": "norm2_1", "norm_memory": "norm2_2", "cross_attn.q": "attn2.q",
    "cross_attn.kv": "attn2.kv", "cross_attn.proj": "attn2.proj", "norm2": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}


def load_digpt_official(path: str | Path) -> dict[str, Tensor]:
    """The weights of a D-iGPT checkpoint file (``{"model": ..., "args": Namespace, ...}`` as its
    ``misc.save_model`` writes, or a bare state dict), read without executing code."""
    from .checkpoint import read_weights_only

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


def convert_digpt_official(state: Mapping[str, Any], recipe: Recipe, *,
                           plugins: Plugins | None = None, source: str = "recipe",
                           name: str = "D-iGPT checkpoint") -> dict[str, Tensor]:
    """An official D-iGPT state dict (or checkpoint dict) -> the ARModel state dict of ``recipe``.

    The recipe decides the architecture; the checkpoint must fit it exactly. A recipe that cannot
    hold D-iGPT is a RecipeError; missing, unexpected or mis-shaped keys are one CheckpointError
    line naming them (``source`` and ``name`` head the messages).
    """
    weights = _unwrap(state, name)
    blueprint = resolve(recipe, source, plugins)
    roles = _check_recipe(blueprint)
    _check_depths(weights, blueprint, name)
    with torch.device("meta"):  # shapes only: nothing allocated
        expected = build_model(blueprint, with_tokenizer=False).state_dict()
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: dict[str, None] = {}
    shapes: dict[str, str] = {}
    for key, like in expected.items():
        ref = _reference_key(key, roles)
        if ref is None:  # no counterpart: the unused final encoder norm, as the identity
            converted[key] = torch.ones(like.shape) if key.endswith("weight") else torch.zeros(like.shape)
            continue
        ref = _shared_norm(ref, weights)
        if ref not in weights:
            missing[ref] = None
            continue
        used.add(ref)
        value, want = weights[ref], _reference_shape(key, tuple(like.shape))
        if tuple(value.shape) != want:
            shapes[ref] = f"{ref} ({list(value.shape)} in the checkpoint, {list(want)} from the recipe)"
            continue
        converted[key] = _adapt(key, ref, value, blueprint, name)
    unexpected = sorted(set(weights) - used - _IGNORED)
    problems = [f"{label} {_some(keys)}" for label, keys in (
        ("missing keys", list(missing)), ("unexpected keys", unexpected),
        ("shape mismatch", list(shapes.values()))) if keys]
    if problems:
        raise CheckpointError(f"{name} does not fit {source}: {'; '.join(problems)}")
    return converted


def _check_recipe(blueprint: Blueprint) -> dict[str, str]:
    """What the recipe must say to hold D-iGPT; returns {decoder key: reference prefix}."""
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
    return {key: _ROLES[predicts] for key, predicts in roles.items()}


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


def _reference_key(key: str, roles: Mapping[str, str]) -> str | None:
    """The reference's name for an arvision key (None: the final encoder norm, which it lacks)."""
    if key.startswith("encoder.vit."):
        rest = key.removeprefix("encoder.vit.")
        return None if rest.startswith("norm.") else rest  # timm's ViT names = the reference's
    parts = key.split(".")
    if parts[0] == "decoders" and parts[1] in roles:
        prefix, head, inner = roles[parts[1]], parts[2], parts[3:]
        rest = ".".join(inner)
        if head == "query":
            return f"{prefix}_token"
        if head == "position":
            return "decoder_pos_embed"
        if head == "memory" and inner[0] in ("norms", "proj"):  # memory.norms.K.* / memory.proj.*
            part = "enc_norm" if inner[0] == "norms" else "enc2dec"
            return f"{_MEMORY_OF[prefix]}_{part}.{'.'.join(inner[1:])}"
        if head == "blocks" and ".".join(inner[1:-1]) in _DECODER_BLOCK:  # blocks.N.<module>.<param>
            return f"{prefix}_blocks.{inner[0]}.{_DECODER_BLOCK['.'.join(inner[1:-1])]}.{inner[-1]}"
        if head in ("norm", "head"):
            return f"{prefix}_{'pred' if head == 'head' else 'norm'}.{rest}"
    raise CheckpointError(f"arvision key {key} has no D-iGPT counterpart")


def _shared_norm(ref: str, weights: Mapping[str, Tensor]) -> str:
    """``*_enc_norm.K.*``: one shared LayerNorm, saved four times or (deduplicated) once."""
    found = re.fullmatch(r"(\w+_enc_norm)\.(\d+)\.(\w+)", ref)
    if found and ref not in weights and f"{found[1]}.0.{found[3]}" in weights and \
            not any(key.startswith(f"{found[1]}.1.") for key in weights):
        return f"{found[1]}.0.{found[3]}"
    return ref


def _reference_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if key.endswith(".position"):  # (1, h*w, dim) <- (1, 1 + h*w, dim): a CLS row first
        return (shape[0], shape[1] + 1, shape[2])
    return shape


def _adapt(key: str, ref: str, value: Tensor, blueprint: Blueprint, name: str) -> Tensor:
    value = value.detach().float().clone()
    if key.endswith(".position"):
        if value[0, 0].abs().max() > 0:
            raise CheckpointError(f"{name}: {ref}[0, 0] (the position added to the CLS query) is "
                                  "not zero; arvision's CLS query has no position")
        return value[:, 1:]
    if ".memory.proj." in key:  # rows j*depth + i (interleaved) -> i*dim + j (contiguous chunks)
        table = blueprint.recipe.decoders[_decoder_index(key, blueprint)]
        depth = table.config.depth
        return value.reshape(-1, depth, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
    return value


def _decoder_index(key: str, blueprint: Blueprint) -> int:
    loss_key = key.split(".")[1]
    return next(i for i, table in enumerate(blueprint.recipe.decoders) if table.loss_key == loss_key)


def _some(items: list[str]) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


# --- timm export -----------------------------------------------------------------------------

def timm_arguments(recipe: Recipe) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments that rebuild the recipe's encoder (headless)."""
    enc = recipe.encoder
    data_size, channels = data_image_spec(recipe)
    overrides = {"patch_size": enc.patch_size, "embed_dim": enc.embed_dim, "depth": enc.depth,
                 "num_heads": enc.num_heads}
    return {"pretrained": False, "num_classes": 0, "img_size": enc.img_size or data_size,
            **{key: value for key, value in overrides.items() if value is not None},
            "in_chans": enc.in_chans or channels, "class_token": enc.class_token}


def timm_call(recipe: Recipe, path: str | Path) -> str:
    """The exact ``timm.create_model(...)`` line that loads an exported encoder."""
    arguments = timm_arguments(recipe)
    text = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
    return f"timm.create_model({recipe.encoder.name!r}, {text}, checkpoint_path={str(path)!r})"


def export_timm(checkpoint_path: str | Path, out_path: str | Path,
                plugins: Plugins | None = None) -> str:
    """Write an arvision checkpoint's encoder as a plain timm state dict; returns the
    ``timm.create_model`` call that loads it (strictly)."""
    import timm  # heavy; only here

    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    state = load_checkpoint(checkpoint_path)
    if not isinstance(state.get("recipe"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{checkpoint_path}: no 'recipe' and 'model' to export from")
    recipe = structure_recipe(state["recipe"], f"{checkpoint_path} (its recipe)", plugins)
    if recipe.encoder.stem == "tokens":
        raise CheckpointError(f"{checkpoint_path}: encoder.stem = 'tokens': the encoder embeds token "
                              "ids and has no patch embedding, so it is not a timm image model")
    weights = {key.removeprefix("encoder.vit."): value for key, value in state["model"].items()
               if key.startswith("encoder.vit.")}
    arguments = timm_arguments(recipe)
    with torch.device("meta"):
        model = timm.create_model(recipe.encoder.name, **arguments)
    _check_fits(weights, model.state_dict(), checkpoint_path, recipe.encoder.name)
    save_atomic(out_path, weights)
    return timm_call(recipe, out_path)


def _check_fits(weights: Mapping[str, Tensor], expected: Mapping[str, Tensor], name: Path,
                model: str) -> None:
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{key} ({list(weights[key].shape)} vs {list(expected[key].shape)})"
              for key in sorted(set(weights) & set(expected))
              if weights[key].shape != expected[key].shape]
    problems = [f"{label} {_some(keys)}" for label, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if keys]
    if problems:
        raise CheckpointError(f"{name}: its encoder does not fit timm {model}: {'; '.join(problems)}")

