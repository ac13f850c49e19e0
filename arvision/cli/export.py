"""``arvision export``: a trained encoder as a timm model folder (or one state dict file)."""

from enum import StrEnum
from pathlib import Path

import typer

__all__ = ["export"]


class Format(StrEnum):
    timm = "timm"
    state_dict = "state-dict"


class Weights(StrEnum):
    model = "model"
    ema = "ema"


def export(
    checkpoint: Path = typer.Argument(..., help="arvision checkpoint (checkpoint.pt).", metavar="CKPT",
                                      show_default=False),
    out: Path = typer.Argument(..., metavar="OUT", show_default=False,
                               help="Folder to write (--format timm), or the .pth file "
                                    "(--format state-dict)."),
    format: Format = typer.Option(Format.timm, "--format", "-f",
                                  help="'timm': a folder in the Hugging Face Hub layout "
                                       "(config.json, model.safetensors, README.md); 'state-dict': "
                                       "one timm state dict file."),
    weights: Weights = typer.Option(Weights.model, "--weights",
                                    help="The trained weights, or their EMA (train.ema)."),
    push: str | None = typer.Option(None, "--push", metavar="ORG/NAME", show_default=False,
                                    help="Then upload the folder to this Hub model repository "
                                         "(needs `hf auth login` or HF_TOKEN)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repository private."),
    license: str = typer.Option("other", "--license", help="License in the model card (SPDX id "
                                "such as apache-2.0, or 'other')."),
) -> None:
    """Write the encoder of CKPT as a timm VisionTransformer.

    The default folder carries the architecture, every override and the input normalisation, so
    plain timm loads it as it is:

    \b
        timm.create_model("local-dir:OUT", pretrained=True)

    With --push ORG/NAME it is uploaded and loads as "hf-hub:ORG/NAME". An earlier export at OUT
    is replaced once the new one is complete. --format state-dict writes OUT.pth and prints the
    timm.create_model(...) call that loads it. An encoder with stem = 'tokens' has no patch
    embedding and is refused.
    """
    from ..errors import ArvisionError
    from ..export import export_folder, export_state_dict, push_folder  # heavy imports when run

    if format is Format.state_dict:
        if push:
            raise ArvisionError("--push uploads a timm folder; drop --format state-dict")
        call = export_state_dict(checkpoint, out, weights.value)
        typer.echo(f"wrote {out}; load it with:\n{call}")
        return
    export_folder(checkpoint, out, weights.value, license)
    typer.echo(f"wrote {out} (config.json, model.safetensors, README.md); load it with:\n"
               f'timm.create_model("local-dir:{out}", pretrained=True)')
    if push:
        url = push_folder(out, push, private, f"Upload {checkpoint.name} ({weights.value} weights)")
        typer.echo(f"uploaded to {url}; load it with:\n"
                   f'timm.create_model("hf-hub:{push}", pretrained=True)')
