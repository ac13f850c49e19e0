"""Training a VQ-KD tokenizer on arvision's engine, and writing the tokenizer it gives.

    recipe --> geometry (:func:`~.vqkd_recipe.resolve_vqkd`) --> teacher ([vqkd.teacher], frozen)
           --> VQKDModel (BEiT ViT encoder, codebook, ViT decoder)
           --> Trainer (start_run, assemble_trainer): AdamW, warmup + cosine, bf16, accumulation,
               DDP / FSDP under torchrun
           --> fit: checkpoints, exact resume, metrics.jsonl, TensorBoard, progress
           --> OUT/checkpoint.pt (the run)
           --> OUT/vqkd.pth: the tokenizer, in the official layout, with its sizes under "vqkd"
               OUT/tokenizer.toml: the [tokenizer] table that loads it (name = "vqkd")

The trainer's loss, its parts (``loss/rec``, ``loss/quant``) and the codebook's health
(``codebook/used``: codes picked in the last ``vqkd.usage_window`` batches;
``codebook/perplexity``: exp(entropy) of the batch's codes; ``codebook/restarted``) are logged
every ``train.log_every`` steps.

What the reference's loop does (microsoft/unilm ``beit2/engine_for_vqkd.py``,
``run_vqkd_training.py``, ``TOKENIZER.md``) and how it is done here:

- One forward under autocast returns ``emb_loss + rec_loss``; a loss scaler steps AdamW (betas
  0.9, 0.99, weight decay 1e-4) with a per-step cosine lr after a linear warmup, lr scaled by
  batch / 128; a non-finite loss stops the run. Here the engine does the same (its base lr counts
  per 256 images; a non-finite loss stops the run with the last checkpoint intact).
- ``quant_loss`` and ``rec_loss`` are logged every step; the unused codes are counted once per
  epoch from ``cluster_size`` (reset at each epoch's start). Here the parts are logged with the
  codes used in a window of batches and the batch perplexity, every ``log_every`` steps.
- k-means clusters the first batch however small (sampling with replacement when it holds fewer
  vectors than codes); here a first batch with fewer vectors than codes is a recipe error.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w
import torch
from timm.optim import param_groups_weight_decay
from torch import Tensor

from arvision.checkpoint import load_checkpoint, save_atomic
from arvision.components import Tokenizer
from arvision.data.loader import build_batches, build_dataset
from arvision.engine import Trainer, TrainResult, assemble_trainer, fit, start_run
from arvision.errors import RecipeError
from arvision.recipe import recipe_to_dict

from .vqkd_model import VQKDModel
from .vqkd_network import SIZES
from .vqkd_quantizer import NEVER, VectorQuantizer
from .vqkd_recipe import VQKDGeometry, VQKDRecipe, resolve_vqkd, tokenizer_table

__all__ = ["TOKENIZER_FILE", "VQKDResult", "build_model", "build_vqkd_trainer", "codes_used",
           "export_tokenizer", "meta_parameters", "official_state", "train_vqkd"]

TOKENIZER_FILE = "vqkd.pth"
TABLE_FILE = "tokenizer.toml"
#: The model's parts the tokenizer file keeps (the official key names).
KEPT = ("encoder.", "encode_task_layer.", "decoder.", "decode_task_layer.")
RENAMED = {"quantize.codebook": "quantize.embedding.weight", "quantize.cluster_size":
           "quantize.cluster_size"}


@attrs.frozen
class VQKDResult:
    train: TrainResult
    tokenizer: Path | None  # OUT/vqkd.pth (rank 0), else None
    table: dict[str, Any] | None  # its [tokenizer] table
    used: int | None  # codes picked in the last usage_window batches


def build_model(recipe: VQKDRecipe, geometry: VQKDGeometry, teacher: Tokenizer | None) -> VQKDModel:
    """The VQ-KD model of ``recipe`` (on the default device; random weights, codebook unset)."""
    enc, vq = recipe.encoder, recipe.vqkd
    quantizer = VectorQuantizer(
        vq.num_codes, vq.code_dim, decay=vq.decay, beta=vq.beta, kmeans_init=vq.kmeans_init,
        kmeans_iterations=vq.kmeans_iterations, dead_after=vq.dead_after,
        usage_window=vq.usage_window, seed=recipe.train.seed)
    image = geometry.image
    return VQKDModel.build(
        size=image.size, patch_size=image.patch_size, in_chans=image.channels,
        embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads, drop_path=enc.drop_path,
        decoder_dim=geometry.decoder_dim, decoder_depth=vq.decoder_depth,
        decoder_heads=geometry.decoder_heads, quantizer=quantizer, teacher=teacher,
        teacher_dim=geometry.teacher.dim)


def build_teacher(recipe: VQKDRecipe, geometry: VQKDGeometry, source: str) -> Tokenizer:
    """The ``[vqkd.teacher]`` tokenizer, with its weights (a ValueError becomes a RecipeError)."""
    table = recipe.vqkd.teacher
    try:
        return table.registration.factory(table.config, geometry.image)
    except ValueError as exc:
        raise RecipeError(f"{source}: vqkd.teacher: {exc}") from None


def vqkd_inputs(batch: Sequence[Tensor], device: torch.device) -> dict[str, Any]:
    """``VQKDModel`` arguments from a loader batch ``(images, labels, seeds)``."""
    return {"images": batch[0].to(device, non_blocking=True)}


def _check_kmeans_sample(recipe: VQKDRecipe, geometry: VQKDGeometry, vectors: int,
                         source: str) -> None:
    if recipe.vqkd.kmeans_init and vectors < recipe.vqkd.num_codes:
        raise RecipeError(
            f"{source}: vqkd.num_codes: k-means starts {recipe.vqkd.num_codes} codes from the first "
            f"batch, which holds only {vectors} vectors ({geometry.grid[0] * geometry.grid[1]} per "
            "image); use fewer codes, a larger train.batch_size (or micro_batch), or "
            "kmeans_init = false")


def build_vqkd_trainer(recipe: VQKDRecipe, out_dir: Path, source: str = "recipe") -> Trainer:
    """The Trainer of a VQ-KD recipe: its model on its data, on the engine."""
    start = start_run(recipe, source)
    geometry = resolve_vqkd(recipe, source)
    tokens = geometry.grid[0] * geometry.grid[1]
    _check_kmeans_sample(recipe, geometry, start.micro_batch * start.ranks.world * tokens, source)
    dataset = build_dataset(recipe.data)
    batches = build_batches(dataset, recipe.data, start.micro_batch, geometry.image.size,
                            recipe.train.seed, start.ranks.rank, start.ranks.world)
    model = build_model(recipe, geometry, build_teacher(recipe, geometry, source)).to(start.device)
    model.encoder.set_grad_checkpointing(recipe.train.activation_checkpointing)
    model.decoder.set_grad_checkpointing(recipe.train.activation_checkpointing)

    def groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return param_groups_weight_decay(module, weight_decay, model.no_weight_decay())

    return assemble_trainer(start, out_dir, model, batches, vqkd_inputs, ema_source=model,
                            shard_units=[*model.encoder.blocks, *model.decoder.blocks],
                            frozen=set(model.teacher.parameters()), param_groups=groups)


def official_state(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A trained model's state in the official VQ-KD layout (the ``vqkd`` tokenizer's)."""
    state = {key: value for key, value in model_state.items() if key.startswith(KEPT)}
    state |= {new: model_state[old] for old, new in RENAMED.items()}
    return state


def codes_used(model_state: dict[str, Tensor], window: int) -> int:
    """Codes the quantiser picked in the last ``window`` training batches."""
    last, batches = model_state["quantize.last_used"], model_state["quantize.batches"]
    return int(((last != NEVER) & (batches - last < window)).sum())


def export_tokenizer(recipe: VQKDRecipe, checkpoint: Path, out_dir: Path,
                     source: str = "recipe") -> tuple[Path, dict[str, Any], int]:
    """Write ``OUT/vqkd.pth`` and ``OUT/tokenizer.toml`` from a run's checkpoint (atomically);
    returns the file, its [tokenizer] table and the codes used."""
    state = load_checkpoint(checkpoint)
    path = out_dir / TOKENIZER_FILE
    table = tokenizer_table(recipe, path, source)
    save_atomic(path, {"model": official_state(state["model"]),
                       "vqkd": {key: table[key] for key in SIZES},
                       "recipe": recipe_to_dict(recipe), "step": state["step"]})
    partial = out_dir / f".{TABLE_FILE}.partial"
    partial.write_text(tomli_w.dumps({"tokenizer": table}))
    partial.replace(out_dir / TABLE_FILE)
    return path, table, codes_used(state["model"], recipe.vqkd.usage_window)


def train_vqkd(recipe: VQKDRecipe, out_dir: Path, source: str = "recipe") -> VQKDResult:
    """Train as the recipe says (resuming from ``out_dir``'s newest checkpoint), then write the
    tokenizer (rank 0)."""
    result = fit(build_vqkd_trainer(recipe, out_dir, source))
    if not result.main:
        return VQKDResult(result, None, None, None)
    path, table, used = export_tokenizer(recipe, result.checkpoint, out_dir, source)
    return VQKDResult(result, path, table, used)


def meta_parameters(recipe: VQKDRecipe, source: str = "recipe") -> dict[str, int]:
    """Trained parameters per part, counted on the meta device (nothing allocated; the teacher is
    neither built nor counted)."""
    with torch.device("meta"):
        model = build_model(recipe, resolve_vqkd(recipe, source), teacher=None)
    return {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
