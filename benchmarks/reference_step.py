"""The released D-iGPT model's training step (benchmarks/digpt_reference.py), built at the
geometry of an arvision blueprint, for benchmarks/train_step.py's ``reference`` mode.

One step as the released code trains: a segment permutation per sample (``torch.randperm``),
forward of both decoders' losses under autocast, backward, AdamW step (timm's weight-decay groups,
fused on CUDA, lr = 1e-4 x batch / 256 as the engine's), ``zero_grad``. Images arrive normalised,
as from the released data loader; the teacher's tokens are random, as in the arvision rows.
"""

from collections.abc import Callable

import torch
from timm.optim import param_groups_weight_decay

from arvision.build import Blueprint
from arvision.model.vit import vit_defaults
from digpt_reference import Reference

__all__ = ["make_reference_step", "reference_model", "reference_targets"]

RELEASED_TAPS = (6, 8, 10, 12)  # the released encoder's tapped blocks (a depth-12 ViT)


def reference_model(blueprint: Blueprint) -> Reference:
    """The released model with the blueprint's encoder, decoders and teacher width; a geometry
    the released code cannot express (other segments, other taps, unequal decoders) is a
    ValueError."""
    recipe = blueprint.recipe
    if (blueprint.layout.rows, blueprint.layout.cols) != (2, 2) or blueprint.taps != RELEASED_TAPS:
        raise ValueError("the released D-iGPT model has 2x2 segments and taps blocks 6/8/10/12 of "
                         f"12; this geometry has {blueprint.layout.rows}x{blueprint.layout.cols} "
                         f"and taps {blueprint.taps}")
    decoders = {(t.config.dim, t.config.depth, t.config.num_heads) for t in recipe.decoders}
    if len(decoders) != 1 or len(recipe.decoders) != 2:
        raise ValueError(f"the released model has two equal decoders, got {sorted(decoders)}")
    (ddim, ddepth, dheads), = decoders
    heads = recipe.encoder.num_heads or vit_defaults(recipe.encoder.name)["num_heads"]
    size = blueprint.image.size
    return Reference(size, size // blueprint.grid[0], blueprint.encoder_dim, blueprint.depth,
                     heads, ddim, ddepth, dheads, blueprint.tokens.dim)


def reference_targets(tokens: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Teacher tokens (B, h, w, C) + CLS (B, C) -> the released model's target (B, 1 + h*w, C)."""
    return torch.cat([cls[:, None], tokens.flatten(1, 2)], dim=1)


def make_reference_step(blueprint: Blueprint, images: torch.Tensor, tokens: torch.Tensor,
                        cls: torch.Tensor, precision: torch.dtype | None
                        ) -> tuple[Reference, Callable[[], None]]:
    """(the model, one training step on ``images`` (B, C, H, W) in [0, 1] and the teacher's
    ``tokens`` + ``cls``; ``precision``: the autocast dtype, None for fp32)."""
    device = images.device
    model = reference_model(blueprint).to(device).train()
    mean, std = blueprint.recipe.encoder.mean, blueprint.recipe.encoder.std
    normalised = (images - torch.tensor(mean, device=device)[:, None, None]) / \
        torch.tensor(std, device=device)[:, None, None]
    target = reference_targets(tokens, cls)
    batch = images.shape[0]
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4 * batch / 256,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")

    def step() -> None:
        perm = torch.stack([torch.randperm(4) for _ in range(batch)]).to(device)  # (B, 4)
        with torch.autocast(device.type, dtype=precision or torch.float32,
                            enabled=precision is not None):
            ar_loss, kd_loss = model(normalised, target, perm)
        (ar_loss + kd_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step
