"""D-iGPT's released checkpoint into arvision (same losses), and arvision's encoder out to timm.

``Reference`` (benchmarks/digpt_reference.py) re-states the released D-iGPT model with its
parameter names and quirks; here it runs at a tiny size.
"""

import argparse
import math

import attrs
import pytest
import timm
import tomli_w
import torch
from torch import Tensor

from arvision import hookimpl
from arvision.build import build_model, resolve
from arvision.checkpoint import load_checkpoint
from arvision.components import Tokenizer, Tokens, TokenSpec
from arvision.convert import convert_digpt_official
from arvision.errors import CheckpointError, RecipeError
from arvision.plugins import get_plugins, load_plugins
from arvision.recipe import structure_recipe
from conftest import run_cli
from digpt_reference import Reference

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
GRID, TEACHER_GRID, TEACHER_DIM = 4, 8, 12  # student 32 px / patch 8; teacher 8x8 (resampled)


def digpt_recipe(tokenizer: dict | None = None, **encoder) -> dict:
    """D-iGPT's layout at a tiny size: depth 12 (taps 6/8/10/12), width 16, 2x2 segments."""
    return {
        "run": {"name": "digpt-tiny"},
        "data": {"source": "synthetic", "synthetic": {"num_images": 8, "image_size": 32,
                                                      "channels": 3, "num_classes": 2}},
        "encoder": {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
                    "embed_dim": 16, "depth": 12, "num_heads": 2, "pos_embed": "sincos",
                    **IMAGENET, **encoder},
        "tokenizer": tokenizer or {"name": "features", "grid": TEACHER_GRID, "dim": TEACHER_DIM},
        "ordering": {"name": "random_segments", "rows": 2, "cols": 2},
        "decoders": [
            {"name": "transformer", "predicts": "next", "key": "generative", "dim": 16, "depth": 2,
             "num_heads": 2, "memory_norm_eps": 1e-5},
            {"name": "transformer", "predicts": "visible", "key": "discriminative", "dim": 16,
             "depth": 2, "num_heads": 2, "memory_norm_eps": 1e-5},
        ],
        "target": {"name": "cosine"},
        "train": {"batch_size": 4, "steps": 2, "precision": "fp32"},
    }


# --- an inline feature teacher with a CLS target (the role CLIP plays in D-iGPT) ---------------

@attrs.frozen
class FeaturesConfig:
    grid: int = 8
    dim: int = 12


class Features(Tokenizer):
    """Features (B, grid, grid, dim) + CLS; the tests pass their own tokens to ``forward``."""

    @classmethod
    def token_spec(cls, config: FeaturesConfig, image) -> TokenSpec:
        return TokenSpec((config.grid, config.grid), config.dim, discrete=False, cls=True)

    def forward(self, images: Tensor) -> Tokens:
        batch, (h, w), dim = images.shape[0], self.spec.grid, self.spec.dim
        return Tokens(torch.randn(batch, h, w, dim), torch.randn(batch, dim))


class FeaturesPlugin:
    @hookimpl
    def register_tokenizers(self, register):
        register("features", Features, FeaturesConfig)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(extra={"test-features": FeaturesPlugin()})


def reference(out: int = TEACHER_DIM, seed: int = 0) -> Reference:
    """A random (not initial) reference model in eval mode, sized like :func:`digpt_recipe`."""
    torch.manual_seed(seed)
    model = Reference(32, 8, 16, 12, 2, 16, 2, 2, out)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in ("pos_embed", "decoder_pos_embed"):
                continue
            if name.endswith("bias") or param.dim() == 3:  # biases, cls_token, ar/kd_token
                param.copy_(0.1 * torch.randn_like(param))
            elif param.dim() == 1:  # LayerNorm weights
                param.copy_(1 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / math.sqrt(param[0].numel()))
    return model.eval()


def batch_inputs(batch: int = 3, dim: int = TEACHER_DIM):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, 32, 32, generator=gen)
    target = torch.randn(batch, 1 + TEACHER_GRID ** 2, dim, generator=gen)
    perm = torch.stack([torch.randperm(4, generator=gen) for _ in range(batch)])
    return images, target, perm


def normalised(images: Tensor) -> Tensor:
    mean, std = (torch.tensor(IMAGENET[k])[None, :, None, None] for k in ("mean", "std"))
    return (images - mean) / std


# --- conversion --------------------------------------------------------------------------------

def test_reference_quirks_are_in_its_state_dict():
    state = reference().state_dict()
    # ModuleList([LayerNorm] * 4): four keys, one tensor
    assert {f"ar_enc_norm.{i}.weight" for i in range(4)} <= set(state)
    assert state["ar_enc_norm.0.weight"].data_ptr() == state["ar_enc_norm.3.weight"].data_ptr()
    mask = state["mask"]  # CLS (last) sees all; only the last segment sees CLS
    assert mask[-1].eq(0).all() and mask[:-1, -1].eq(0).tolist() == [False] * 8 + [True] * 4
    assert state["decoder_pos_embed"][0, 0].eq(0).all()


def converted_losses(state: dict, plugins, images: Tensor, target: Tensor, perm: Tensor
                     ) -> dict[str, Tensor]:
    """The loss parts of the recipe's ARModel on ``state`` converted from the reference."""
    recipe = structure_recipe(digpt_recipe(), "digpt.toml", plugins)
    converted = convert_digpt_official({"model": state, "epoch": 3}, recipe)
    model = build_model(resolve(recipe), with_tokenizer=False).eval()
    default = model.decoders["generative"].position.clone()
    model.load_state_dict(converted, strict=True)
    assert not torch.equal(default, model.decoders["generative"].position)  # MAE's layout, carried
    tokens = Tokens(target[:, 1:].reshape(-1, TEACHER_GRID, TEACHER_GRID, TEACHER_DIM), target[:, 0])
    with torch.no_grad():
        return model(images, tokens=tokens, order=perm).parts


def test_converted_model_gives_the_reference_losses(plugins):
    """Every parameter perturbed (LayerNorm weights and biases off 1 and 0), so a norm, bias or
    memory read from the wrong place shows in the losses."""
    ref = reference()
    images, target, perm = batch_inputs()
    with torch.no_grad():
        ar_loss, kd_loss = ref(normalised(images), target, perm)
    parts = converted_losses(ref.state_dict(), plugins, images, target, perm)
    torch.testing.assert_close(parts["generative"], ar_loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(parts["discriminative"], kd_loss, rtol=0, atol=1e-5)
    assert parts["generative"] != parts["discriminative"]


def test_memories_are_mapped_as_the_released_code_reads_them_not_by_name(plugins):
    """Converting a checkpoint whose ar_enc_* and kd_enc_* are exchanged, which is what a
    by-name mapping amounts to, gives other losses than the reference: the swap matters."""
    ref = reference()
    images, target, perm = batch_inputs()
    with torch.no_grad():
        ar_loss, kd_loss = ref(normalised(images), target, perm)
    state = ref.state_dict()
    by_name = {}
    for key, value in state.items():
        part = key.split(".")[0]
        if part in ("ar_enc_norm", "ar_enc2dec", "kd_enc_norm", "kd_enc2dec"):
            other = {"ar": "kd", "kd": "ar"}[part[:2]]
            key = other + key[2:]
        by_name[key] = value
    parts = converted_losses(by_name, plugins, images, target, perm)
    assert (parts["generative"] - ar_loss).abs() > 1e-3
    assert (parts["discriminative"] - kd_loss).abs() > 1e-3
    recipe = structure_recipe(digpt_recipe(), "digpt.toml", plugins)
    converted = convert_digpt_official(state, recipe)
    depth = 2  # contiguous chunks from the interleaved rows
    assert torch.equal(converted["decoders.generative.memory.proj.bias"],
                       state["kd_enc2dec.bias"].view(-1, depth).T.flatten())
    assert torch.equal(converted["decoders.discriminative.memory.norms.0.bias"],
                       state["ar_enc_norm.0.bias"])


def test_checkpoint_without_decoder_positions_still_loads(plugins):
    """Before positions were saved: a missing ``position`` keeps the built-in sin-cos table."""
    recipe = structure_recipe(digpt_recipe(), "digpt.toml", plugins)
    model = build_model(resolve(recipe), with_tokenizer=False)
    state = {key: value for key, value in model.state_dict().items() if not key.endswith(".position")}
    default = model.decoders["generative"].position.clone()
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.decoders["generative"].position, default)


def test_shared_norm_saved_once_fills_all_taps(plugins):
    state = reference().state_dict()
    for p in ("ar", "kd"):
        for i in (1, 2, 3):
            for name in ("weight", "bias"):
                del state[f"{p}_enc_norm.{i}.{name}"]
    recipe = structure_recipe(digpt_recipe(), "digpt.toml", plugins)
    converted = convert_digpt_official(state, recipe)
    norm0 = state["kd_enc_norm.0.weight"]  # the generative decoder reads the kd_* memory
    assert all(torch.equal(converted[f"decoders.generative.memory.norms.{i}.weight"], norm0)
               for i in range(4))


def test_interleaved_projection_is_reordered(plugins):
    state = reference().state_dict()
    recipe = structure_recipe(digpt_recipe(), "digpt.toml", plugins)
    converted = convert_digpt_official(state, recipe)
    # the discriminative decoder reads the ar_* memory
    source, proj = state["ar_enc2dec.weight"], converted["decoders.discriminative.memory.proj.weight"]
    depth, dim = 2, 16
    for layer in range(depth):
        for feature in (0, 5, dim - 1):
            assert torch.equal(proj[layer * dim + feature], source[feature * depth + layer])


def one_line_error(error, match: str, call) -> str:
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.pop("ar_blocks.1.norm1.weight"), r"missing keys ar_blocks\.1\.norm1\.weight"),
    (lambda s: s.update(extra=torch.zeros(1)), r"unexpected keys extra"),
    (lambda s: s.update({"ar_pred.weight": torch.zeros(13, 16)}),
     r"shape mismatch ar_pred\.weight \(\[13, 16\] in the checkpoint, \[12, 16\] from the recipe\)"),
    (lambda s: s.update(pos_embed=torch.zeros(1, 26, 16)),
     r"pos_embed \(\[1, 26, 16\] in the checkpoint, \[1, 17, 16\] from the recipe\)"),
    (lambda s: s["decoder_pos_embed"][0, 0].fill_(1.0), r"decoder_pos_embed\[0, 0\].*not zero"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.11.")],
     r"blocks\.\*: 11 blocks in the checkpoint, 12 from digpt.toml \(encoder\.depth\)"),
], ids=["missing", "unexpected", "shape", "grid", "cls-position", "depth"])
def test_checkpoint_that_does_not_fit_is_one_line(plugins, edit, match):
    state = {key: value.clone() for key, value in reference().state_dict().items()}
    edit(state)
    recipe = structure_recipe(digpt_recipe(), "digpt.toml", plugins)
    one_line_error(CheckpointError, match,
                   lambda: convert_digpt_official(state, recipe, source="digpt.toml"))


@pytest.mark.parametrize(("change", "match"), [
    ({"encoder": {"taps": [3, 6, 9, 12]}}, r"encoder\.taps: D-iGPT's decoders read blocks \[6, 8, 10, 12\]"),
    ({"encoder": {"pos_embed": "learned"}}, r"encoder\.pos_embed"),
    ({"ordering": {"name": "random_segments", "rows": 4, "cols": 4}}, r"ordering: .*2x2"),
    ({"decoders": [{"name": "transformer", "predicts": "next", "dim": 16, "depth": 2,
                    "num_heads": 2}]}, r"decoders: .*'next'"),
    ({"decoders": [{k: v for k, v in d.items() if k != "memory_norm_eps"}
                   for d in digpt_recipe()["decoders"]]},
     r"decoders\[0\]: .*memory_norm_eps = 1e-05"),
], ids=["taps", "pos_embed", "layout", "decoders", "norm-eps"])
def test_recipe_that_cannot_hold_digpt_is_one_line(plugins, change, match):
    data = digpt_recipe()
    for section, value in change.items():
        data[section] = {**data[section], **value} if isinstance(value, dict) else value
    recipe = structure_recipe(data, "digpt.toml", plugins)
    state = reference().state_dict()
    one_line_error(RecipeError, match,
                   lambda: convert_digpt_official(state, recipe, source="digpt.toml"))


# --- command line ------------------------------------------------------------------------------



#: The global plugins have no feature teacher with CLS: pixels (4x4 patches, 8x8 grid, 48-d).
PIXELS = {"name": "pixels", "patch_size": 4}


def write_reference_checkpoint(path, state) -> None:
    torch.save({"model": state, "optimizer": {}, "epoch": 299, "scaler": {"scale": 1.0},
                "args": argparse.Namespace(model="DiGPT_vit_base", blr=1.5e-4)}, path)


def test_cli_convert_writes_a_checkpoint_the_recipe_loads(tmp_path, capsys):
    ref_path, out, recipe_path = tmp_path / "checkpoint-299.pth", tmp_path / "arv.pt", tmp_path / "r.toml"
    write_reference_checkpoint(ref_path, reference(out=48).state_dict())
    recipe_path.write_text(tomli_w.dumps(digpt_recipe(PIXELS)))
    code, stdout, err = run_cli(capsys, "convert", "digpt-official", ref_path, out, "--recipe",
                                recipe_path)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    saved = load_checkpoint(out)
    assert saved["step"] == 0
    recipe = structure_recipe(saved["recipe"], "saved", get_plugins())
    model = build_model(resolve(recipe), with_tokenizer=False)
    model.load_state_dict(saved["model"], strict=True)
    code, stdout, err = run_cli(capsys, "export", out, tmp_path / "encoder.pth", "--format",
                                "state-dict")
    assert code == 0, err
    vit = eval(stdout.strip().splitlines()[-1], {"timm": timm})  # loads strictly
    pos = saved["model"]["encoder.vit.pos_embed"]  # the reference's (MAE-layout) table
    assert torch.equal(vit.pos_embed, pos) and pos[0, 1:].ne(0).any()

    code, _, err = run_cli(capsys, "convert", "digpt-official", ref_path, out, "--recipe",
                           recipe_path, "--set", "encoder.taps=[2, 4, 6, 8]")
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "encoder.taps" in err
