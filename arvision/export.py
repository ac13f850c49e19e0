"""arvision's encoder out to timm: ``encoder.vit.*`` of an arvision checkpoint is a plain timm
VisionTransformer state dict; :func:`export_timm` writes it and returns the ``timm.create_model``
call that loads it."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import key_mismatches, load_checkpoint, save_atomic
from .data.sources import image_spec
from .errors import CheckpointError
from .plugins import get_plugins
from .recipe import Recipe, structure_recipe

__all__ = ["export_timm", "timm_arguments", "timm_call"]


def timm_arguments(recipe: Recipe) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments that rebuild the recipe's encoder (headless)."""
    enc = recipe.encoder
    data_size, channels = image_spec(recipe.data)
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


def export_timm(checkpoint_path: str | Path, out_path: str | Path) -> str:
    """Write an arvision checkpoint's encoder as a plain timm state dict; returns the
    ``timm.create_model`` call that loads it (strictly)."""
    import timm  # heavy; only here

    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    state = load_checkpoint(checkpoint_path)
    if not isinstance(state.get("recipe"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{checkpoint_path}: no 'recipe' and 'model' to export from")
    recipe = structure_recipe(state["recipe"], f"{checkpoint_path} (its recipe)", get_plugins())
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
    problems = key_mismatches(dict(weights), dict(expected))
    if problems:
        raise CheckpointError(f"{name}: its encoder does not fit timm {model}: {'; '.join(problems)}")
