"""``arvision export``: a trained encoder as a plain timm checkpoint."""

from pathlib import Path

import typer

__all__ = ["export"]


def export(
    checkpoint: Path = typer.Argument(..., help="arvision checkpoint (checkpoint.pt).", metavar="CKPT",
                                      show_default=False),
    timm_out: Path = typer.Option(..., "--timm", metavar="OUT.pth", show_default=False,
                                  help="timm state dict to write (the encoder's weights)."),
) -> None:
    """Write the encoder of CKPT as a timm VisionTransformer state dict.

    Prints the timm.create_model(...) call (model name and the recipe's overrides) that loads
    it strictly. An encoder with stem = 'tokens' has no patch embedding and is refused.
    """
    from ..export import export_timm  # heavy imports (torch, timm) only when run

    call = export_timm(checkpoint, timm_out)
    typer.echo(f"wrote {timm_out}; load it with:\n{call}")
