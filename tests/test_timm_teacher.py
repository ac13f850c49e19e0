"""The timm teacher against timm's own forward, on a tiny ViT saved by the test."""

import re

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from arvision.components import ImageSpec
from arvision.errors import CheckpointError
from arvision_plugins.timm_teacher import TimmTeacher, TimmTeacherConfig
from teachers import TINY_VIT, tiny_vit, write_vit_checkpoint

IMAGE = ImageSpec(size=32, channels=3, patch_size=8)


@pytest.fixture(scope="module")
def model():
    return tiny_vit(seed=2)


@pytest.fixture
def checkpoint(tmp_path, model):
    return write_vit_checkpoint(tmp_path / "vit.pt", model)


def teacher(path, **options) -> TimmTeacher:
    config = TimmTeacherConfig(checkpoint=None if path is None else str(path),
                               **{**TINY_VIT, "precision": "fp32", **options})
    return TimmTeacher(config, IMAGE)


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return (x - mean) / std


def test_final_tokens_match_forward_features(model, checkpoint):
    tokenizer = teacher(checkpoint)
    spec = tokenizer.spec
    assert (spec.grid, spec.dim, spec.cls, spec.discrete) == ((4, 4), 32, True, False)
    x = images()
    out = tokenizer(x)
    with torch.no_grad():
        reference = model.forward_features(normalise(x))  # (B, 1 + 16, 32), normed
    assert out.tokens.shape == (3, 4, 4, 32) and out.tokens.dtype == torch.float32
    torch.testing.assert_close(out.tokens.flatten(1, 2), reference[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(out.cls, reference[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("layer", [1, 2])
def test_layer_is_the_output_of_that_block(model, checkpoint, layer):
    seen = []
    handle = model.blocks[layer - 1].register_forward_hook(lambda _m, _i, output: seen.append(output))
    x = images()
    try:
        with torch.no_grad():
            model.forward_features(normalise(x))
    finally:
        handle.remove()
    tokenizer = teacher(checkpoint, layer=layer)
    out = tokenizer(x)
    torch.testing.assert_close(out.tokens.flatten(1, 2), seen[0][:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(out.cls, seen[0][:, 0], rtol=0, atol=0)
    assert len(tokenizer.vit.blocks) == layer


def test_headless_checkpoint_without_class_token(tmp_path):
    model = tiny_vit(num_classes=0, global_pool="avg", class_token=False)
    path = write_vit_checkpoint(tmp_path / "avg.pt", model)
    tokenizer = teacher(path, class_token=False, size=48)
    assert tokenizer.spec.grid == (6, 6) and not tokenizer.spec.cls
    out = tokenizer(images(2))
    assert out.cls is None and out.tokens.shape == (2, 6, 6, 32)
    assert not any(p.requires_grad for p in tokenizer.parameters())
    assert not tokenizer.train().vit.training


def test_reads_the_encoder_of_an_arvision_checkpoint(tmp_path, model):
    state = {f"encoder.vit.{key}": value for key, value in model.state_dict().items()
             if not key.startswith("head.")}
    state["decoders.next.head.weight"] = torch.zeros(3, 3)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "arvision-checkpoint", "model": state, "step": 4}, path)
    x = images()
    with torch.no_grad():
        reference = model.forward_features(normalise(x))
    torch.testing.assert_close(teacher(path)(x).cls, reference[:, 0], rtol=0, atol=0)


def test_token_spec_allocates_nothing(monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    built = []  # the devices of each ViT token_spec builds
    init = VisionTransformer.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append({tensor.device.type for tensor in self.state_dict().values()})

    monkeypatch.setattr(VisionTransformer, "__init__", recorded)
    spec = TimmTeacher.token_spec(TimmTeacherConfig(model="vit_huge_patch14_clip_224", layer=16),
                                  ImageSpec(224, 3, 16))
    assert (spec.grid, spec.dim, spec.cls) == ((16, 16), 1280, True)
    assert built and all(devices == {"meta"} for devices in built), built
    with pytest.raises(ValueError, match="close: vit_tiny_patch16_224"):
        TimmTeacher.token_spec(TimmTeacherConfig(model="vit_tiny_patch16_22"), IMAGE)
    with pytest.raises(ValueError, match="layer 3 is past"):
        TimmTeacher.token_spec(TimmTeacherConfig(**TINY_VIT, layer=3), IMAGE)


def test_missing_and_mismatched_checkpoints_name_the_file(tmp_path, checkpoint):
    missing = tmp_path / "gone.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"tokenizer.checkpoint {missing} does not exist")):
        teacher(missing)
    with pytest.raises(CheckpointError) as info:
        teacher(checkpoint, depth=3)
    message = str(info.value)
    assert "\n" not in message and str(checkpoint) in message
    assert "missing keys blocks.2.norm1.weight" in message
    with pytest.raises(CheckpointError, match=r"pos_embed \(\[1, 17, 32\] in the file, "
                                              r"\[1, 17, 64\] in the model\)"):
        teacher(checkpoint, embed_dim=64)
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is not a readable weights file"):
        teacher(checkpoint)


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_fp32_or_bf16_by_the_hardware(checkpoint, monkeypatch, native):
    from arvision import precision as optim

    monkeypatch.setattr(optim, "fast_bf16", lambda device_type: native)
    auto = teacher(checkpoint, precision="auto")(images()).tokens
    same = teacher(checkpoint, precision="bf16" if native else "fp32")(images()).tokens
    assert torch.equal(auto, same)
    if native:  # bf16 rounding shows
        assert not torch.equal(auto, teacher(checkpoint)(images()).tokens)
