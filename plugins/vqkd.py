"""BEiT v2 visual tokenizer (VQ-KD): the id of the nearest code of every patch (the released
tokenizers: 8192 codes, 16x16 patches).

What the reference does (microsoft/unilm ``beit2/``), and what this module does the same way:

- Input (``modeling_vqkd.py``, ``VQKD.pre_process``; the model builders such as
  ``vqkd_encoder_base_decoder_3x768x12_clip`` leave ``process_type='default'``): images arrive as
  ``ToTensor()`` output in [0, 1] (``datasets.py``, ``DataAugmentationForBEiT.visual_token_transform``
  has no Normalize; ``PRETRAINING.md`` resizes them to 224 with ``--second_interpolation bicubic``)
  and become ``x * 255 / 127.5 - 1``, i.e. ``2x - 1`` in [-1, 1]: no ImageNet or CLIP mean/std.
  (The reference multiplies by 255 only ``if data.max() <= 1``; here the bicubic resize is clamped
  to [0, 1], so that branch is always the one taken.)
- Encoder (``modeling_vqkd.py``, ``get_model_default_params``; ``modeling_finetune.py``,
  ``VisionTransformer``/``Block``/``Attention``): ViT-B/16, a class token and an absolute position
  embedding, no relative position bias, no layer scale (``init_values=0``), pre-norm blocks with
  LayerNorm eps 1e-6, attention whose qkv Linear has no bias of its own but ``cat(q_bias, 0,
  v_bias)``, an MLP with exact GELU. ``use_mean_pooling=True`` makes ``norm`` an Identity and adds
  ``fc_norm``; ``VQKD.encode`` asks for ``return_patch_tokens=True``: ``fc_norm`` of every patch
  token (the class token is dropped). timm's ``Beit`` (``global_pool='avg'``, no head) is this
  network with the very same parameter names, so it is used as is.
- ``encode_task_layer``: Linear(768, 768) - Tanh - Linear(768, 32), run outside autocast.
- Quantiser (``norm_ema_quantizer.py``, ``NormEMAVectorQuantizer.forward``): the 32-d features are
  L2-normalised and the id is the code at the smallest L2 distance. The EMA updates keep every
  code L2-normalised, so this is the code of largest cosine; here both sides are normalised and the
  id is the argmax of the cosine.

Checkpoint: the official file (e.g. ``vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth``) is a
dict with the weights under ``"model"`` (``"state_dict"`` or the top level also work). The keys
``encoder.*`` and ``encode_task_layer.*`` load onto the modules of the same name and
``quantize.embedding.weight`` onto ``codebook``; the parts a tokenizer does not run (see
``IGNORED_PREFIXES`` and ``IGNORED_KEYS``) are skipped. Anything else missing, unexpected or of
the wrong shape is a one-line :class:`~arvision.errors.CheckpointError`.

A VQ-KD trained here (``arvision tokenizer train-vqkd``, :mod:`.vqkd_train`) writes the same
layout at its own sizes (any ``num_codes``, ``code_dim``, width, depth, patch, image size, and
``in_chans`` 1 for grey images), and records them under ``"vqkd"`` (:data:`SIZES`): a recipe whose
sizes differ is told in one line which keys to set to what.
"""

from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision import hookimpl
from arvision.checkpoint import read_weights_only
from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision.config import positive, setting
from arvision.errors import CheckpointError, listed

from .vqkd_network import SIZES, beit_vit

__all__ = ["IGNORED_KEYS", "IGNORED_PREFIXES", "SIZES", "VQKDConfig", "VQKDTokenizer", "beit_vit",
           "read_checkpoint", "read_checkpoint_file"]

#: Parts of the official checkpoint the tokenizer does not run: the decoder and its task layer,
#: and what the reference's own tokenizer loader drops (``scaling*``, ``teacher*``, ``loss*``).
IGNORED_PREFIXES = ("decoder.", "decode_task_layer.", "scaling_layer.", "teacher", "loss")
#: The quantiser's training statistics (code usage, EMA sums, the k-means-init flag).
IGNORED_KEYS = frozenset({"quantize.cluster_size", "quantize.embedding.cluster_size",
                          "quantize.embedding.embed_avg", "quantize.embedding.initted"})
#: Official name -> this module's name, where they differ.
RENAMED = {"quantize.embedding.weight": "codebook"}
#: The config keys a checkpoint written by ``arvision tokenizer train-vqkd`` records under "vqkd".
@attrs.frozen
class VQKDConfig:
    checkpoint: str = setting(help="the official VQ-KD weights, e.g. "
                              "vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth")
    size: int = setting(224, "resize images to this side (bicubic) before the encoder",
                        validator=positive)
    patch_size: int = setting(16, "the encoder's patch size: one id per patch", validator=positive)
    embed_dim: int = setting(768, "encoder width", validator=positive)
    depth: int = setting(12, "encoder blocks", validator=positive)
    num_heads: int = setting(12, "encoder attention heads", validator=positive)
    num_codes: int = setting(8192, "codebook size (the vocabulary)", validator=positive)
    code_dim: int = setting(32, "width of a code", validator=positive)
    in_chans: int = setting(3, "image channels the encoder reads (the official checkpoints: 3, "
                            "RGB; a VQ-KD trained here on grey images: 1)", validator=positive)


class VQKDTokenizer(Tokenizer):
    """BEiT v2 VQ-KD: id of the nearest code of every patch, (B, size/patch, size/patch)."""

    @classmethod
    def token_spec(cls, config: VQKDConfig, image: ImageSpec) -> TokenSpec:
        if config.size % config.patch_size:
            raise ValueError(f"tokenizer.patch_size {config.patch_size} does not divide "
                             f"tokenizer.size {config.size}")
        if config.embed_dim % config.num_heads:
            raise ValueError(f"tokenizer.num_heads {config.num_heads} does not divide "
                             f"tokenizer.embed_dim {config.embed_dim}")
        if image.channels != config.in_chans:
            what = "RGB" if config.in_chans == 3 else f"{config.in_chans}-channel"
            raise ValueError(f"vqkd reads {what} images (tokenizer.in_chans {config.in_chans}); "
                             f"the data has {image.channels} channels")
        grid = config.size // config.patch_size
        return TokenSpec(grid=(grid, grid), dim=config.num_codes, discrete=True, cls=False)

    def __init__(self, config: VQKDConfig, image: ImageSpec) -> None:
        super().__init__(config, image)
        dim = config.embed_dim
        self.encoder = beit_vit(config.size, config.patch_size, config.in_chans, dim, config.depth,
                                config.num_heads)  # norm = Identity, fc_norm = LayerNorm
        self.encode_task_layer = nn.Sequential(
            nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, config.code_dim))
        self.register_buffer("codebook", torch.empty(config.num_codes, config.code_dim))
        self._load(Path(config.checkpoint))
        self.freeze()

    def _load(self, path: Path) -> None:
        state, sizes = read_checkpoint_file(path)
        if sizes is not None:
            _check_sizes(self.config, sizes, path)
        expected = {_official(key): value.shape for key, value in self.state_dict().items()}
        kept = {key: value for key, value in state.items() if not _ignored(key)}
        missing = [key for key in expected if key not in kept]
        unexpected = [key for key in kept if key not in expected]
        if missing or unexpected:
            parts = [f"{label} {listed(keys)}" for label, keys in
                     (("missing keys", missing), ("unexpected keys", unexpected)) if keys]
            raise CheckpointError(f"vqkd checkpoint {path}: not the VQ-KD layout: "
                                  f"{'; '.join(parts)}")
        for key, shape in expected.items():
            if kept[key].shape != shape:
                raise CheckpointError(
                    f"vqkd checkpoint {path}: {key} has shape {tuple(kept[key].shape)}, the config "
                    f"expects {tuple(shape)} (check size, patch_size, embed_dim, depth, num_heads, "
                    f"num_codes, code_dim)")
        self.load_state_dict({RENAMED.get(key, key): value for key, value in kept.items()})

    def preprocess(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> (B, 3, size, size) in [-1, 1], as the reference."""
        size = self.config.size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                                   align_corners=False).clamp(0, 1)
        return images * 2 - 1

    def encode(self, x: Tensor) -> Tensor:
        """(B, 3, size, size) -> patch features (B, h*w, embed_dim), class token dropped."""
        x = self.encoder.forward_features(x)  # (B, 1 + h*w, D), encoder.norm is an Identity
        return self.encoder.fc_norm(x[:, 1:])  # (B, h*w, D)

    def quantize(self, features: Tensor) -> Tensor:
        """Patch features (B, N, embed_dim) -> ids (B, N) of the codes of largest cosine."""
        with torch.autocast(features.device.type, enabled=False):
            z = self.encode_task_layer(features.float())  # (B, N, code_dim)
            z = F.normalize(z, dim=-1)
            codes = F.normalize(self.codebook.float(), dim=-1)  # (K, code_dim)
            return (z @ codes.T).argmax(dim=-1)  # (B, N)

    def forward(self, images: Tensor) -> Tokens:
        h, w = self.spec.grid
        x = self.preprocess(images)  # (B, 3, size, size) in [-1, 1]
        ids = self.quantize(self.encode(x))  # (B, h*w)
        return Tokens(ids.view(images.shape[0], h, w))


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The weights of a VQ-KD checkpoint (official key names), or a one-line CheckpointError."""
    return read_checkpoint_file(path)[0]


def read_checkpoint_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, int] | None]:
    """The weights of a VQ-KD checkpoint (official key names) and, for one trained here, the
    sizes it records under "vqkd" (None in the official files); or a one-line CheckpointError."""
    path = Path(path)

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"vqkd checkpoint {path}: {problem}")

    if not path.is_file():
        what = "is a directory" if path.is_dir() else "is missing"
        raise bad(f"{what}; expected the official BEiT v2 VQ-KD weights "
                  "(e.g. vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth)")
    state = read_weights_only(path, "VQ-KD checkpoint")
    sizes = state.get("vqkd") if isinstance(state, dict) else None
    if sizes is not None and not (isinstance(sizes, dict) and set(SIZES) <= sizes.keys()):
        raise bad(f"its 'vqkd' entry should record {', '.join(SIZES)}; got {sizes!r}"[:300])
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise bad(f"holds a {type(state).__name__}; expected a dict of tensors "
                  "(at the top level or under 'model')")
    odd = [str(key) for key, value in state.items() if not isinstance(value, Tensor)]
    if odd:
        raise bad(f"expected a dict of tensors; not tensors: {listed(odd)}")
    return state, sizes


def _check_sizes(config: VQKDConfig, sizes: dict[str, int], path: Path) -> None:
    """A checkpoint trained here names its sizes: a recipe that differs is told what to set."""
    differing = [key for key in SIZES if getattr(config, key) != sizes[key]]
    if differing:
        wanted = ", ".join(f"tokenizer.{key} = {sizes[key]} (not {getattr(config, key)})"
                           for key in differing)
        raise CheckpointError(f"vqkd checkpoint {path} was trained at other sizes: set {wanted}")


def _official(key: str) -> str:
    return next((old for old, new in RENAMED.items() if new == key), key)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


@hookimpl
def register_tokenizers(register):
    register("vqkd", VQKDTokenizer, VQKDConfig)


@hookimpl
def register_commands(app):
    from .tokenizer_commands import tokenizer_group
    from .vqkd_command import train_vqkd_command

    tokenizer_group(app).command("train-vqkd")(train_vqkd_command)
