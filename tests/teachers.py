"""Teacher checkpoints the tests write themselves (no downloads): tiny models in official layouts.

Several engineers add helpers here: append new functions, keep the existing ones as they are.
"""

from pathlib import Path

import torch
from torch import Tensor


def vqkd_state(size: int = 32, patch_size: int = 8, embed_dim: int = 32, depth: int = 2,
               num_heads: int = 2, num_codes: int = 16, code_dim: int = 8, seed: int = 0,
               extras: bool = True) -> dict[str, Tensor]:
    """Random weights under the key names of the official BEiT v2 VQ-KD checkpoint.

    ``extras`` adds what a tokenizer must ignore: the decoder, its task layer, the quantiser's
    training statistics and the CLIP scaling layer.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2, shift: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale + shift

    dim, hidden, tokens = embed_dim, 4 * embed_dim, (size // patch_size) ** 2 + 1
    state = {
        "encoder.cls_token": rand(1, 1, dim),
        "encoder.pos_embed": rand(1, tokens, dim),
        "encoder.patch_embed.proj.weight": rand(dim, 3, patch_size, patch_size),
        "encoder.patch_embed.proj.bias": rand(dim),
    }
    for i in range(depth):
        block = f"encoder.blocks.{i}."
        state |= {
            block + "norm1.weight": rand(dim, shift=1.0), block + "norm1.bias": rand(dim),
            block + "attn.q_bias": rand(dim), block + "attn.v_bias": rand(dim),
            block + "attn.qkv.weight": rand(3 * dim, dim),
            block + "attn.proj.weight": rand(dim, dim), block + "attn.proj.bias": rand(dim),
            block + "norm2.weight": rand(dim, shift=1.0), block + "norm2.bias": rand(dim),
            block + "mlp.fc1.weight": rand(hidden, dim), block + "mlp.fc1.bias": rand(hidden),
            block + "mlp.fc2.weight": rand(dim, hidden), block + "mlp.fc2.bias": rand(dim),
        }
    codebook = torch.nn.functional.normalize(rand(num_codes, code_dim), dim=-1)
    state |= {
        "encoder.fc_norm.weight": rand(dim, shift=1.0), "encoder.fc_norm.bias": rand(dim),
        "encode_task_layer.0.weight": rand(dim, dim), "encode_task_layer.0.bias": rand(dim),
        "encode_task_layer.2.weight": rand(code_dim, dim), "encode_task_layer.2.bias": rand(code_dim),
        "quantize.embedding.weight": codebook,
    }
    if extras:
        state |= {
            "quantize.cluster_size": rand(num_codes).abs(),
            "quantize.embedding.cluster_size": rand(num_codes).abs(),
            "quantize.embedding.embed_avg": rand(num_codes, code_dim),
            "quantize.embedding.initted": torch.tensor([1.0]),
            "decoder.cls_token": rand(1, 1, dim),
            "decoder.patch_embed.proj.weight": rand(dim, code_dim, 1, 1),
            "decoder.blocks.0.attn.q_bias": rand(dim),
            "decode_task_layer.0.weight": rand(dim, dim),
            "decode_task_layer.2.weight": rand(512, dim),
            "scaling_layer.shift": rand(1, 3, 1, 1), "scaling_layer.scale": rand(1, 3, 1, 1),
        }
    return state


def write_vqkd_checkpoint(path: Path, state: dict[str, Tensor] | None = None, wrap: str | None = "model",
                          **sizes: int) -> Path:
    """Save ``state`` (default: :func:`vqkd_state` of ``sizes``) as the official file does:
    under ``"model"`` (``wrap=None``: at the top level)."""
    state = vqkd_state(**sizes) if state is None else state
    torch.save(state if wrap is None else {wrap: state}, path)
    return path


#: A tiny open_clip model: ViT tower 32 px, patch 8 (4x4 grid), width 64, 2 blocks, 32-d embedding.
TINY_CLIP = "arvision-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
#: A tiny timm ViT: 32 px, patch 8 (4x4 grid), width 32, 2 blocks; the timm teacher's overrides.
TINY_VIT = {"model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 32,
            "depth": 2, "num_heads": 2}


def register_clip_config(name: str = TINY_CLIP, config: dict | None = None) -> str:
    """Make open_clip know the model ``name`` (default: the tiny one); returns the name.

    open_clip keeps every config it has scanned, so the JSON file can go once registered.
    """
    import json
    import tempfile

    import open_clip

    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.json"
            path.write_text(json.dumps(config or TINY_CLIP_CONFIG))
            open_clip.add_model_config(path)
    return name


def tiny_clip(seed: int = 0, name: str = TINY_CLIP, config: dict | None = None, **options):
    """A randomly initialised (seeded) open_clip CLIP of the tiny config, in eval mode;
    ``options`` go to ``open_clip.create_model`` (``force_quick_gelu=True``, ...)."""
    import open_clip

    register_clip_config(name, config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return open_clip.create_model(name, **options).eval()


def fake_hub_cache(cache: Path, repo_id: str, filename: str, model) -> Path:
    """Put ``model``'s state dict where ``huggingface_hub`` (offline) finds ``repo_id/filename``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return write_clip_checkpoint(repo / "snapshots" / revision / filename, model)


def write_clip_checkpoint(path: Path, model=None) -> Path:
    """Save a CLIP's state dict (default: :func:`tiny_clip`) as ``torch.save`` users do."""
    torch.save((model or tiny_clip()).state_dict(), path)
    return path


def tiny_vit(seed: int = 0, **overrides):
    """The tiny timm ViT of :data:`TINY_VIT` (a 1000-class head unless overridden), in eval mode."""
    import timm

    kwargs = {**TINY_VIT, **overrides}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(kwargs.pop("model"), pretrained=False, **kwargs).eval()


def write_vit_checkpoint(path: Path, model=None) -> Path:
    """Save a timm ViT's state dict (default: :func:`tiny_vit`)."""
    torch.save((model or tiny_vit()).state_dict(), path)
    return path


#: The Hub name under which :func:`exported_run` caches its export.
EXPORT_REPO = "arv/tiny-vit"
#: The exported test encoder's input normalisation (not the defaults, so a lost one shows).
EXPORT_NORMALIZATION = {"mean": [0.3, 0.5, 0.7], "std": [0.2, 0.25, 0.3]}


def fake_hub_folder(cache: Path, repo_id: str, folder: Path) -> Path:
    """Put every file of ``folder`` where ``huggingface_hub`` (offline) finds ``repo_id``'s files,
    as a download would (``models--ORG--NAME/snapshots/REV``, ``refs/main``)."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def exported_run(root: Path, **encoder) -> dict:
    """A 4-step pretraining of conftest's tiny recipe (``encoder`` keys merged), its ``arvision
    export`` folder, and that folder in a Hub cache under :data:`EXPORT_REPO`: the checkpoint,
    folder, cache and the encoder's timm weights."""
    from arvision.checkpoint import load_checkpoint
    from arvision.export import export_folder
    from arvision.pretrain import train
    from conftest import tiny_recipe

    result = train(tiny_recipe(encoder=encoder), root / "run", "tiny.toml")
    folder = export_folder(result.checkpoint, root / "export")
    fake_hub_folder(root / "hub", EXPORT_REPO, folder)
    weights = {key.removeprefix("encoder.vit."): value
               for key, value in load_checkpoint(result.checkpoint)["model"].items()
               if key.startswith("encoder.vit.")}
    return {"checkpoint": result.checkpoint, "folder": folder, "cache": root / "hub",
            "weights": weights}


def export_spec(exported: dict, form: str) -> str:
    """How a user names the :func:`exported_run` encoder: its folder, ``local-dir:`` or
    ``hf-hub:`` name, or its arvision checkpoint."""
    return {"folder": str(exported["folder"]), "local-dir": f"local-dir:{exported['folder']}",
            "hf-hub": f"hf-hub:{EXPORT_REPO}", "checkpoint": str(exported["checkpoint"])}[form]
