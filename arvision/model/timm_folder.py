"""Models in the Hugging Face Hub's layout, as timm writes and reads them: a folder on disk
(``arvision export``'s output, timm's ``save_for_hf``) or ``hf-hub:ORG/NAME[@REVISION]``.

    config.json          architecture, model_args (create_model arguments), pretrained_cfg
                         (mean, std, input_size, interpolation, crop_pct, ...)
    model.safetensors    the weights (pytorch_model.bin is read too, weights only)

The config is parsed by timm's own readers (``load_model_config_from_path`` /
``load_model_config_from_hf``), so a folder means here what ``timm.create_model("local-dir:PATH")``
makes of it; Hub files come through huggingface_hub's cache (``HF_HUB_OFFLINE=1``: the cache only).
Every failure is a one-line :class:`~arvision.errors.CheckpointError` naming the recipe key.
"""

from pathlib import Path
from typing import Any

import attrs
from torch import Tensor

from ..checkpoint import read_weights_only
from ..errors import CheckpointError

__all__ = ["HUB_PREFIX", "LOCAL_PREFIX", "SAFE_WEIGHTS", "TimmFolder", "is_timm_folder",
           "read_timm_folder"]

HUB_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"
SAFE_WEIGHTS, PICKLED_WEIGHTS = "model.safetensors", "pytorch_model.bin"
#: model_args that describe the classifier, not the encoder (a head is decided by the weights)
HEAD_ARGS = ("num_classes", "global_pool", "fc_norm")


def is_timm_folder(spec: str | Path | None) -> bool:
    """Whether ``spec`` names a model in the Hub layout: ``hf-hub:``, ``local-dir:``, or a
    directory holding a ``config.json``."""
    if spec is None:
        return False
    text = str(spec)
    return text.startswith((HUB_PREFIX, LOCAL_PREFIX)) or (Path(text).expanduser() /
                                                           "config.json").is_file()


@attrs.frozen
class TimmFolder:
    """What a Hub-layout model's config.json says, and where its weights are."""

    spec: str  # as given in the recipe
    key: str  # the recipe key that named it, for errors
    architecture: str  # timm model name
    model_args: dict[str, Any]  # create_model arguments of the encoder (head arguments left out)
    pretrained_cfg: dict[str, Any]  # timm's parsed pretrained_cfg (mean, std, input_size, ...)

    @property
    def hub_id(self) -> str | None:
        return self.spec.removeprefix(HUB_PREFIX) if self.spec.startswith(HUB_PREFIX) else None

    @property
    def path(self) -> Path:
        return Path(self.spec.removeprefix(LOCAL_PREFIX)).expanduser()

    def stat(self, name: str) -> tuple[float, ...] | None:
        """``mean`` or ``std`` of the pretrained_cfg (None when it has none)."""
        value = self.pretrained_cfg.get(name)
        return None if value is None else tuple(float(v) for v in value)

    def weights(self) -> dict[str, Tensor]:
        """The state dict: model.safetensors, else pytorch_model.bin read weights-only."""
        safe = self._file(SAFE_WEIGHTS)
        if safe is not None:
            import safetensors.torch

            try:
                return safetensors.torch.load_file(str(safe), device="cpu")
            except Exception as exc:  # a truncated or foreign file
                raise CheckpointError(f"{self.key}: {safe} is not a readable safetensors file "
                                      f"({_first_line(exc)})") from None
        pickled = self._file(PICKLED_WEIGHTS)
        if pickled is None and self.hub_id is not None:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise _hub_error(self.key, self.spec, OSError("not cached"))
        if pickled is None:
            raise CheckpointError(f"{self.key}: {self.spec} has no {SAFE_WEIGHTS} (nor "
                                  f"{PICKLED_WEIGHTS})")
        state = read_weights_only(pickled, f"{self.key} weights")
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.key}: {pickled} holds no state dict")
        return state

    def _file(self, name: str) -> Path | None:
        if self.hub_id is None:
            path = self.path / name
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
        from timm.models._hub import hf_split

        repo, revision = hf_split(self.hub_id)
        try:
            return Path(hf_hub_download(repo, name, revision=revision, library_name="arvision"))
        except EntryNotFoundError:  # not in the repository (or, offline, not in the cache)
            return None
        except Exception as exc:
            raise _hub_error(self.key, self.spec, exc) from None


def read_timm_folder(spec: str, key: str) -> TimmFolder:
    """Read the config.json of ``spec`` (a folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``)
    through timm; the weights are read later, by :meth:`TimmFolder.weights`."""
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    spec = str(spec)
    try:
        if spec.startswith(HUB_PREFIX):
            cfg, architecture, args = load_model_config_from_hf(spec.removeprefix(HUB_PREFIX))
        else:
            path = Path(spec.removeprefix(LOCAL_PREFIX)).expanduser()
            if not path.is_dir():
                raise CheckpointError(f"{key}: {spec} is not a folder")
            if not (path / "config.json").is_file():
                raise CheckpointError(f"{key}: {spec} has no config.json (expected a folder "
                                      "written by `arvision export` or timm's save_for_hf)")
            cfg, architecture, args = load_model_config_from_path(path)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # JSON that is not a timm config
        raise CheckpointError(f"{key}: {spec}/config.json is not a timm model config "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    except Exception as exc:
        raise _hub_error(key, spec, exc) from None
    args = {name: value for name, value in (args or {}).items() if name not in HEAD_ARGS}
    if isinstance(args.get("img_size"), list | tuple):  # timm stores (H, W); a square side here
        height, width = args["img_size"]
        args["img_size"] = height if height == width else (height, width)
    return TimmFolder(spec, key, architecture, args, dict(cfg))


def _hub_error(key: str, spec: str, exc: Exception) -> CheckpointError:
    """One line for a Hub read that failed: not cached while offline, no such repository, ..."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled) or (
            constants.HF_HUB_OFFLINE and isinstance(exc, OSError)):
        return CheckpointError(f"{key}: {spec} is not in the local Hugging Face cache "
                               f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; download it "
                               "where the Hub can be reached, or name the folder instead")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(f"{key}: {spec}: no such repository on the Hub, or no access to it "
                               "(log in with `hf auth login`)")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"{key}: {spec}: no such revision on the Hub")
    return CheckpointError(f"{key}: {spec} could not be read ({type(exc).__name__}: "
                           f"{_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]

