"""``arvision export CKPT OUT_DIR``: the encoder as the folder timm's own ``save_for_hf`` writes,
which ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` loads as it is, and which loads
with ``hf-hub:ORG/NAME`` once uploaded.

    OUT_DIR/config.json          architecture, model_args (every override), pretrained_cfg with the
                                 recipe's input normalisation (mean, std), input size, interpolation
    OUT_DIR/model.safetensors    the headless VisionTransformer's weights
    OUT_DIR/README.md            the model card (:mod:`.card`)

The folder is written aside and renamed into place; an earlier export at OUT_DIR is replaced only
once the new one is complete, and a folder that is not an export is never overwritten.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..model.pretrained import PretrainedEncoder
from ..model.timm_folder import SAFE_WEIGHTS
from ..model.vit import channel_stat
from .card import model_card
from .state_dict import build_encoder, read_checkpoint_encoder

__all__ = ["FILES", "data_config", "export_folder"]

FILES = ("config.json", SAFE_WEIGHTS, "README.md")
#: pretrained_cfg entries that describe the exported weights; the rest of the source model's
#: (its timm tag, license, paper, Hub ids) describe weights timm ships, not these.
KEEP_CFG = ("architecture", "input_size", "fixed_input_size", "interpolation", "crop_pct",
            "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv", "classifier")


def data_config(encoder: PretrainedEncoder, channels: int) -> dict[str, Any]:
    """The preprocessing the encoder was trained with, as timm's data config: the recipe's mean
    and std (one per channel), a plain resize (crop_pct 1.0) with the recipe's interpolation."""
    interpolation = encoder.recipe.data.interpolation if encoder.recipe is not None else "bicubic"
    return {"mean": per_channel(encoder.mean, channels), "std": per_channel(encoder.std, channels),
            "crop_pct": 1.0, "crop_mode": "center", "interpolation": interpolation}


def per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    """One value per channel (a single value repeated), as the recipe wrote them."""
    channel_stat(values, channels)  # one value or one per channel, else a ValueError
    return [float(value) for value in values] * (channels if len(values) == 1 else 1)


def export_folder(checkpoint: str | Path, out_dir: str | Path, weights: str = "model",
                  license: str = "other") -> Path:
    """Write the encoder of an arvision pretraining checkpoint to ``out_dir`` in the Hub layout
    (:data:`FILES`); returns ``out_dir``."""
    from timm.models import save_for_hf

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_target(out_dir)
    encoder = read_checkpoint_encoder(checkpoint, weights)
    class_token = encoder.arguments.get("class_token", True)
    # the pooled output: the class token, or (without one) the mean of the tokens after the norm
    vit = build_encoder(encoder, global_pool="token" if class_token else "avg", fc_norm=False)
    vit.pretrained_cfg = {key: value for key, value in vit.pretrained_cfg.items()
                          if key in KEEP_CFG}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial",
                                    dir=out_dir.parent))
    try:
        save_for_hf(vit, str(partial), safe_serialization=True,
                    data_config=data_config(encoder, vit.patch_embed.proj.in_channels))
        card = model_card(encoder, vit, checkpoint, weights, out_dir.name, license)
        (partial / "README.md").write_text(card, encoding="utf-8")
        _publish(partial)
        _replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def _check_target(out_dir: Path) -> None:
    """``out_dir`` is absent, empty, or an earlier export (which the new one replaces)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: exists and is a file; export writes a folder (for one "
                              "file use --format state-dict)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise CheckpointError(f"{out_dir}: exists and is not an exported model (no config.json); "
                              "not overwritten, pass another OUT_DIR")


def _publish(partial: Path) -> None:
    """Sync the files and give them the modes of any new file (mkdtemp's folder is private)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in FILES:
        with (partial / name).open("rb") as file:
            os.fsync(file.fileno())
        os.chmod(partial / name, 0o666 & ~umask)
    os.chmod(partial, 0o777 & ~umask)


def _replace(partial: Path, out_dir: Path) -> None:
    """Move the complete export into place; an earlier one is set aside first and removed last."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(partial, out_dir)
    if old is not None:
        shutil.rmtree(old)
