"""The open_clip teacher against open_clip's own forward, on a tiny model saved by the test."""

import time

import huggingface_hub.constants
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from arvision.components import ImageSpec
from arvision.errors import CheckpointError
from arvision_plugins.clip import ClipConfig, ClipTokenizer
from teachers import TINY_CLIP, fake_hub_cache, tiny_clip, write_clip_checkpoint

IMAGE = ImageSpec(size=32, channels=3, patch_size=8)


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=1)


@pytest.fixture
def checkpoint(tmp_path, model):
    return write_clip_checkpoint(tmp_path / "tiny_clip.pt", model)


def clip_tokenizer(path, **options) -> ClipTokenizer:
    config = ClipConfig(model=TINY_CLIP, pretrained=str(path), **{"precision": "fp32", **options})
    return ClipTokenizer(config, IMAGE)


def images(n: int = 3, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
    return (x - mean) / std


def test_final_tokens_and_cls_match_open_clip(model, checkpoint):
    tokenizer = clip_tokenizer(checkpoint)
    assert tokenizer.spec.grid == (4, 4) and tokenizer.spec.dim == 32 and tokenizer.spec.cls
    x = images()
    out = tokenizer(x)

    with torch.no_grad():
        pooled = model.encode_image(normalise(x))  # (B, 32)
        model.visual.output_tokens = True
        try:
            _, unprojected = model.visual(normalise(x))  # (B, 16, 64): after ln_post, before proj
        finally:
            model.visual.output_tokens = False
    assert model.visual.pool_type == "tok"
    assert out.tokens.shape == (3, 4, 4, 32) and out.tokens.dtype == torch.float32
    torch.testing.assert_close(out.cls, pooled, rtol=0, atol=0)
    torch.testing.assert_close(out.tokens.flatten(1, 2), unprojected @ model.visual.proj)


@pytest.mark.parametrize("layer", [1, 2])
def test_layer_is_the_output_of_that_block(model, checkpoint, layer):
    tokenizer = clip_tokenizer(checkpoint, layer=layer)
    assert tokenizer.spec.dim == 64  # the tower's width: unprojected
    seen = []
    block = model.visual.transformer.resblocks[layer - 1]
    handle = block.register_forward_hook(lambda _m, _i, output: seen.append(output))
    x = images()
    try:
        with torch.no_grad():
            model.encode_image(normalise(x))
    finally:
        handle.remove()
    out = tokenizer(x)
    torch.testing.assert_close(out.tokens.flatten(1, 2), seen[0][:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(out.cls, seen[0][:, 0], rtol=0, atol=0)
    assert len(tokenizer.visual.transformer.resblocks) == layer  # later blocks are not kept


def test_resizes_input_and_repeats_grey_channels(checkpoint):
    tokenizer = clip_tokenizer(checkpoint, size=48)
    assert tokenizer.spec.grid == (6, 6)
    grey = images(2, size=20, channels=1)
    out = tokenizer(grey)
    assert out.tokens.shape == (2, 6, 6, 32)
    torch.testing.assert_close(out.tokens, tokenizer(grey.expand(-1, 3, -1, -1)).tokens)


def test_bf16_autocast_stays_close_to_fp32(checkpoint):
    x = images()
    fp32, bf16 = clip_tokenizer(checkpoint)(x), clip_tokenizer(checkpoint, precision="bf16")(x)
    assert bf16.tokens.dtype == torch.float32
    torch.testing.assert_close(bf16.tokens, fp32.tokens, rtol=0.05, atol=0.05)
    assert not torch.equal(bf16.tokens, fp32.tokens)  # autocast did run in bf16


def test_frozen_and_always_in_eval_mode(checkpoint):
    tokenizer = clip_tokenizer(checkpoint)
    assert not any(p.requires_grad for p in tokenizer.parameters())
    tokenizer.train()
    assert not any(module.training for module in tokenizer.modules())
    assert not hasattr(tokenizer, "text") and not any(
        name.startswith("transformer.") for name, _ in tokenizer.named_parameters())


def test_token_spec_of_vit_h_builds_nothing(monkeypatch):
    def no_build(*_args, **_kwargs):
        raise AssertionError("token_spec built a model")

    monkeypatch.setattr(open_clip, "create_model", no_build)
    start = time.perf_counter()
    spec = ClipTokenizer.token_spec(ClipConfig(model="ViT-H-14"), ImageSpec(224, 3, 16))
    assert (spec.grid, spec.dim, spec.cls, spec.discrete) == ((16, 16), 1024, True, False)
    inner = ClipTokenizer.token_spec(ClipConfig(model="ViT-H/14", layer=24, size=448),
                                     ImageSpec(224, 3, 16))
    assert (inner.grid, inner.dim) == ((32, 32), 1280)
    assert time.perf_counter() - start < 1.0


def test_unknown_model_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown open_clip model 'ViT-H-4' \(close: ViT-H-14"):
        ClipTokenizer.token_spec(ClipConfig(model="ViT-H-4"), IMAGE)
    with pytest.raises(ValueError, match="layer 3 is past"):
        ClipTokenizer.token_spec(ClipConfig(model=TINY_CLIP, layer=3), IMAGE)


def one_line_error(**options) -> str:
    with pytest.raises(CheckpointError) as info:
        ClipTokenizer(ClipConfig(**{"model": TINY_CLIP, "precision": "fp32", **options}), IMAGE)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "clip.pt"
    message = one_line_error(pretrained=str(missing))
    assert str(missing) in message and "no such file" in message


def test_file_that_does_not_fit_names_file_and_keys(tmp_path, model):
    state = model.state_dict()
    state["visual.extra.weight"] = state.pop("visual.ln_post.weight")
    path = tmp_path / "other.pt"
    torch.save(state, path)
    message = one_line_error(pretrained=str(path))
    assert str(path) in message
    assert "missing keys visual.ln_post.weight" in message
    assert "unexpected keys visual.extra.weight" in message

    state = dict(model.state_dict(), **{"visual.proj": torch.zeros(64, 16)})
    torch.save(state, path)
    assert "visual.proj ([64, 16] in the file, [64, 32] in the model)" in one_line_error(
        pretrained=str(path))

    path.write_bytes(b"not a checkpoint")
    assert str(path) in one_line_error(pretrained=str(path))


def test_tag_resolves_through_the_hub_cache_with_its_mean_std_and_gelu(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tag = {"url": "", "hf_hub": "arvision/tiny-clip/", "mean": (0.5, 0.5, 0.5),
           "std": (0.25, 0.25, 0.25), "quick_gelu": True}  # as open_clip's _pcfg writes them
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_CLIP, {"tiny_tag": tag})
    model = tiny_clip(seed=3, force_quick_gelu=True)
    fake_hub_cache(tmp_path / "hub", "arvision/tiny-clip", "open_clip_pytorch_model.bin", model)
    tokenizer = ClipTokenizer(ClipConfig(model=TINY_CLIP, pretrained="tiny-tag", precision="fp32",
                                         cache_dir=str(tmp_path / "hub")), IMAGE)
    x = images()
    with torch.no_grad():
        pooled = model.encode_image((x - 0.5) / 0.25)
    torch.testing.assert_close(tokenizer(x).cls, pooled, rtol=0, atol=0)
    assert type(tokenizer.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_tag_without_cache_or_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    message = one_line_error(model="ViT-H-14", pretrained="laion2b_s32b_b79k",
                             cache_dir=str(tmp_path / "empty"))
    assert message.startswith("tokenizer.pretrained 'laion2b_s32b_b79k' for ViT-H-14 is not in the "
                              "local open_clip/Hugging Face cache")
    assert message.endswith("set tokenizer.pretrained to the checkpoint file")

    message = one_line_error(model="ViT-H-14", pretrained="laion2b_s99b")
    assert "'laion2b_s99b': no such file, and not a pretrained tag of ViT-H-14" in message
    assert "laion2b_s32b_b79k" in message  # the known tags are listed
