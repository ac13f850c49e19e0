"""Registry-driven: every built-in component builds, runs forward and backward on a tiny model."""

from pathlib import Path

import attrs
import pytest
import torch

from arvision.build import build_model, resolve
from arvision.plugins import load_plugins
from arvision.registry import KINDS
from arvision_plugins.colour_palette import save_palette
from conftest import tiny_recipe
from teachers import TINY_CLIP, TINY_VIT, write_clip_checkpoint, write_vit_checkpoint, write_vqkd_checkpoint


def palette_file(tmp_path: Path, colors: int = 8, channels: int = 3) -> str:
    path = tmp_path / "palette.json"
    centres = torch.linspace(-1, 1, colors)[:, None].expand(colors, channels)
    save_palette(path, centres, {"made_by": "test"})
    return str(path)


#: Recipe sections that exercise each component (built-ins; add one per new component).
EXAMPLES = {
    ("tokenizer", "pixels"): lambda tmp: {"tokenizer": {"name": "pixels", "normalize": True}},
    ("tokenizer", "palette"): lambda tmp: {
        "tokenizer": {"name": "palette", "path": palette_file(tmp), "num_colors": 8, "size": 8},
        "target": {"name": "ce"}, "encoder": {"stem": "tokens"}},
    ("tokenizer", "vqkd"): lambda tmp: {
        "tokenizer": {"name": "vqkd", "checkpoint": str(write_vqkd_checkpoint(
            tmp / "vqkd.pth", size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
            num_codes=16, code_dim=8)), "size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
            "num_heads": 2, "num_codes": 16, "code_dim": 8},
        "target": {"name": "ce"}},
    ("tokenizer", "clip"): lambda tmp: {"tokenizer": {  # teacher grid 4x4, as the student's
        "name": "clip", "model": TINY_CLIP, "pretrained": str(write_clip_checkpoint(tmp / "clip.pt"))}},
    ("tokenizer", "timm"): lambda tmp: {"tokenizer": {  # teacher grid 8x8: predictions resampled
        "name": "timm", **TINY_VIT, "checkpoint": str(write_vit_checkpoint(tmp / "vit.pt")),
        "size": 64}},
    ("tokenizer", "student"): lambda tmp: {"tokenizer": {"name": "student"},
                                           "target": {"name": "cosine"}},
    ("ordering", "raster"): lambda tmp: {"ordering": {"name": "raster"}},
    ("ordering", "random"): lambda tmp: {"ordering": {"name": "random"}},
    ("ordering", "segments"): lambda tmp: {"ordering": {"name": "segments", "rows": 2, "cols": 1}},
    ("ordering", "random_segments"): lambda tmp: {"ordering": {"name": "random_segments"}},
    ("ordering", "spiral"): lambda tmp: {"ordering": {"name": "spiral"}},
    ("ordering", "checkerboard"): lambda tmp: {"ordering": {"name": "checkerboard"}},
    ("ordering", "reverse_raster"): lambda tmp: {"ordering": {"name": "reverse_raster"}},
    ("ordering", "fixed_random"): lambda tmp: {"ordering": {"name": "fixed_random", "seed": 3}},
    ("ordering", "clusters"): lambda tmp: {"ordering": {"name": "clusters", "size": 2}},
    ("target", "cosine"): lambda tmp: {"target": {"name": "cosine"}},
    ("decoder", "linear"): lambda tmp: {"decoders": [{"name": "linear", "predicts": "visible"}]},
    ("decoder", "mlp"): lambda tmp: {  # with a CLS target (the timm teacher's class token)
        **EXAMPLES["tokenizer", "timm"](tmp), "decoders": [{"name": "mlp", "dim": 24, "depth": 2}]},
    ("decoder", "transformer"): lambda tmp: {
        "ordering": {"name": "random_segments"}, "target": {"name": "cosine"},
        "decoders": [{"name": "transformer", "predicts": predicts, "dim": 16, "depth": 2,
                      "num_heads": 2} for predicts in ("next", "visible")]},
    ("target", "mse"): lambda tmp: {"target": {"name": "mse"}},
    ("target", "ce"): lambda tmp: {
        "tokenizer": {"name": "palette", "path": palette_file(tmp), "num_colors": 8},
        "target": {"name": "ce", "label_smoothing": 0.1}},
}

BUILTINS = [(kind, name) for kind in KINDS
            for name in sorted(load_plugins(autoload=False).registry(kind).entries)]


@pytest.mark.parametrize(("kind", "name"), BUILTINS, ids=[f"{k}-{n}" for k, n in BUILTINS])
def test_component_forward_backward(kind, name, tmp_path):
    if (kind, name) not in EXAMPLES:
        pytest.fail(f"built-in {kind} {name!r} has no entry in EXAMPLES")
    recipe = tiny_recipe(**EXAMPLES[kind, name](tmp_path))
    blueprint = resolve(recipe, "tiny.toml")
    model = build_model(blueprint)
    images = torch.rand(2, blueprint.image.channels, blueprint.image.size, blueprint.image.size)

    tokens = model.tokenizer(images)
    assert tokens.tokens.shape[:3] == (2, *blueprint.tokens.grid)
    assert tokens.tokens.dtype == (torch.long if blueprint.tokens.discrete else torch.float32)
    plan = model.plan(2, generator=torch.Generator().manual_seed(0))
    assert plan.order.shape == (2, blueprint.num_segments)
    memory = model.encoder(images, plan, tokens.tokens if recipe.encoder.stem == "tokens" else None)
    assert memory.last.shape == (2, blueprint.encoder_tokens, blueprint.encoder_dim)
    for key, decoder in model.decoders.items():
        prediction = decoder(memory, plan)
        per_segment = blueprint.layout.tokens_per_segment(blueprint.grid)
        assert prediction.tokens.shape == (2, blueprint.num_segments - 1, per_segment,
                                           blueprint.target.output_dim), key

    output = model(images, tokens=tokens, order=plan.order)
    assert torch.isfinite(output.loss) and output.loss > 0
    output.loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # every trained parameter takes part in the loss (DDP needs this)
    assert any(p.grad.abs().sum() > 0 for p in model.decoders.parameters())
    assert not any(p.requires_grad for p in model.tokenizer.parameters())


@pytest.mark.parametrize(("kind", "name"), BUILTINS, ids=[f"{k}-{n}" for k, n in BUILTINS])
def test_component_config_is_a_frozen_instance_of_its_registered_class(kind, name, tmp_path):
    """Also for configs without fields (raster, linear, mse): no attribute can be set."""
    recipe = tiny_recipe(**EXAMPLES[kind, name](tmp_path))
    tables = recipe.decoders if kind == "decoder" else (getattr(recipe, kind),)
    configs = [table.config for table in tables if table.name == name]
    assert configs, (kind, name)
    registered = load_plugins(autoload=False).get(kind, name).config
    for config in configs:
        assert type(config) is registered
        for attribute in [field.name for field in attrs.fields(registered)] + ["anything"]:
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(config, attribute, None)


def test_checkpoint_state_leaves_tokenizer_out(tmp_path):
    recipe = tiny_recipe(**EXAMPLES["tokenizer", "palette"](tmp_path))
    model = build_model(resolve(recipe, "tiny.toml"))
    state = model.state_dict()
    assert not any(key.startswith("tokenizer.") for key in state)
    fresh = build_model(resolve(recipe, "tiny.toml"))
    fresh.load_state_dict(state)  # strict: the tokenizer is rebuilt from the recipe
    assert torch.equal(fresh.encoder.vit.pos_embed, model.encoder.vit.pos_embed)
