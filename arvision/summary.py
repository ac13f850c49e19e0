"""What a recipe builds, measured on the meta device: geometry, parameters, FLOPs, memory.

Nothing is downloaded or allocated: the student is built on ``torch.device("meta")`` and the
tokenizer is represented by its :class:`~arvision.components.TokenSpec` alone.
"""

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .build import Blueprint, build_model
from .memory import ADAMW_BYTES_PER_PARAM, estimate_memory, fake_tokens
from .precision import precision_label

__all__ = ["summarize"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def summarize(blueprint: Blueprint, with_memory: bool = True) -> dict[str, Any]:
    """A JSON-able description of the recipe's model (``arvision check``); ``with_memory``: also
    the peak-memory estimate (two more forwards, on fake tensors)."""
    recipe, image, layout = blueprint.recipe, blueprint.image, blueprint.layout
    with torch.device("meta"):
        model = build_model(blueprint, with_tokenizer=False)
        images = torch.zeros(1, image.channels, image.size, image.size)
        with FlopCounterMode(display=False) as forward:
            model(images, tokens=fake_tokens(blueprint, 1))
        with FlopCounterMode(display=False) as step:
            model(images, tokens=fake_tokens(blueprint, 1)).loss.backward()
    parameters = {"encoder": _count(model.encoder),
                  **{f"decoder {key}": _count(dec) for key, dec in model.decoders.items()}}
    total = sum(parameters.values())
    return {
        "encoder": {"name": recipe.encoder.name, "depth": blueprint.depth,
                    "dim": blueprint.encoder_dim, "img_size": image.size,
                    "patch_size": image.patch_size, "stem": recipe.encoder.stem,
                    "class_token": blueprint.encoder_cls,
                    "taps": list(model.encoder.taps)},
        "student_grid": list(blueprint.grid),
        "tokenizer": {"name": recipe.tokenizer.name, "grid": list(blueprint.tokens.grid),
                      "kind": "ids" if blueprint.tokens.discrete else "features",
                      "dim": blueprint.tokens.dim, "cls": blueprint.tokens.cls},
        "ordering": {"name": recipe.ordering.name, "segments": blueprint.num_segments,
                     "layout": [layout.rows, layout.cols],
                     "student_tokens_per_segment": layout.tokens_per_segment(blueprint.grid),
                     "target_tokens_per_segment": layout.tokens_per_segment(
                         blueprint.tokens.grid),
                     # only when on, so summaries of recipes without it read as before
                     **({"prefix_attention": True} if recipe.ordering.prefix_attention else {})},
        "encoder_tokens": blueprint.encoder_tokens,
        "targets_per_decoder": blueprint.targets_per_decoder,
        "decoders": [{"key": table.loss_key, "name": table.name, "predicts": table.predicts,
                      "weight": table.weight} for table in recipe.decoders],
        "parameters": {**parameters, "total": total},
        "flops_per_image": {"forward": forward.get_total_flops(),
                            "train_step": step.get_total_flops()},
        "train_state_bytes": total * ADAMW_BYTES_PER_PARAM,
        "precision": precision_label(recipe.train.precision, recipe.train.device),
        **({"memory": _memory(blueprint)} if with_memory else {}),
    }


def _memory(blueprint: Blueprint) -> dict[str, Any]:
    """The estimated peak of one process's training step at its micro-batch (:mod:`.memory`);
    ``{"error": ...}`` when a component cannot run on fake tensors."""
    train = blueprint.recipe.train
    micro = train.micro_batch or train.batch_size
    try:
        estimate = estimate_memory(blueprint)
    except Exception as exc:  # a plugin's forward that reads tensor values
        return {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}
    return {"per_image_bytes": estimate.per_image_bytes, "fixed_bytes": estimate.fixed_bytes,
            "state_bytes": estimate.state_bytes, "micro_batch": micro,
            "peak_bytes": estimate.peak(micro)}
