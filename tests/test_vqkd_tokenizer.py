"""The BEiT v2 VQ-KD tokenizer against a tiny checkpoint in the official layout."""

import math

import pytest
import torch
import torch.nn.functional as F

import arvision_plugins.vqkd_network as vqkd_network
from arvision.components import ImageSpec, TokenSpec
from arvision.errors import CheckpointError
from arvision_plugins.vqkd import VQKDConfig, VQKDTokenizer
from teachers import vqkd_state, write_vqkd_checkpoint

TINY = {"size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "num_codes": 16, "code_dim": 8}
IMAGE = ImageSpec(size=32, channels=3, patch_size=8)


def tokenizer_for(path, **overrides) -> VQKDTokenizer:
    return VQKDTokenizer(VQKDConfig(checkpoint=str(path), **{**TINY, **overrides}), IMAGE)


@pytest.fixture
def state():
    return vqkd_state(**TINY)


@pytest.fixture
def checkpoint(tmp_path, state):
    return write_vqkd_checkpoint(tmp_path / "vqkd.pth", state)


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def captured_features(tokenizer: VQKDTokenizer, x: torch.Tensor):
    """Run the tokenizer; return its ids and the encoder's patch features (from a hook)."""
    seen = []
    handle = tokenizer.encoder.fc_norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        ids = tokenizer(x).tokens
    finally:
        handle.remove()
    return ids, seen[0]


def reference_features(state: dict, x: torch.Tensor, heads: int, patch: int) -> torch.Tensor:
    """The VQ-KD encoder written out from the raw checkpoint tensors: (B, h*w, D) patch features."""
    w = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    x = x * 2 - 1  # [0, 1] -> [-1, 1]
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + w["pos_embed"]
    b, n, d = x.shape

    def norm(t, name):
        return F.layer_norm(t, (d,), w[name + ".weight"], w[name + ".bias"], eps=1e-6)

    depth = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        h = norm(x, p + "norm1")
        bias = torch.cat([w[p + "attn.q_bias"], torch.zeros(d), w[p + "attn.v_bias"]])
        q, k, v = (h @ w[p + "attn.qkv.weight"].T + bias).split(d, dim=-1)
        q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1) / math.sqrt(d // heads)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = x + out @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        h = norm(x, p + "norm2")
        h = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        x = x + h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]
    return norm(x[:, 1:], "fc_norm")


def reference_ids(state: dict, features: torch.Tensor) -> torch.Tensor:
    """encode_task_layer, then the code of largest cosine: (B, N) ids."""
    z = torch.tanh(features @ state["encode_task_layer.0.weight"].T + state["encode_task_layer.0.bias"])
    z = z @ state["encode_task_layer.2.weight"].T + state["encode_task_layer.2.bias"]
    codes = state["quantize.embedding.weight"]
    cosine = (z / z.norm(dim=-1, keepdim=True)) @ (codes / codes.norm(dim=-1, keepdim=True)).T
    return cosine.argmax(dim=-1)


def test_token_spec_of_the_default_config_builds_nothing(monkeypatch):
    monkeypatch.setattr(vqkd_network, "Beit", None)  # building would fail
    monkeypatch.setattr(torch, "load", None)  # and so would loading
    spec = VQKDTokenizer.token_spec(VQKDConfig(checkpoint="/nowhere/vqkd.pth"),
                                    ImageSpec(224, 3, 16))
    assert spec == TokenSpec(grid=(14, 14), dim=8192, discrete=True, cls=False)


def test_token_spec_rejects_bad_geometry():
    with pytest.raises(ValueError, match="does not divide"):
        VQKDTokenizer.token_spec(VQKDConfig(checkpoint="x", size=30, patch_size=8), IMAGE)
    with pytest.raises(ValueError, match="RGB"):
        VQKDTokenizer.token_spec(VQKDConfig(checkpoint="x"), ImageSpec(28, 1, 4))


def test_ids_shape_dtype_range_and_frozen(checkpoint):
    tokenizer = tokenizer_for(checkpoint)
    ids = tokenizer(images(size=48)).tokens  # resized to 32 first
    assert ids.shape == (3, 4, 4) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < TINY["num_codes"]
    assert len(ids.unique()) > 1
    assert not any(p.requires_grad for p in tokenizer.parameters())
    assert not tokenizer.train().training


def test_ids_match_an_independent_computation(checkpoint, state):
    tokenizer = tokenizer_for(checkpoint)
    x = images()
    ids, features = captured_features(tokenizer, x)
    # The quantiser step from the hooked encoder features.
    assert torch.equal(ids.flatten(1), reference_ids(state, features))
    # The encoder itself, from the raw tensors (q_bias, zero k bias, v_bias; GELU MLP; fc_norm).
    expected = reference_features(state, x, heads=TINY["num_heads"], patch=TINY["patch_size"])
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(ids.flatten(1), reference_ids(state, expected))


def test_input_is_resized_bicubic_first(checkpoint):
    tokenizer = tokenizer_for(checkpoint)
    big = images(size=64)
    small = F.interpolate(big, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    _, from_big = captured_features(tokenizer, big)
    _, from_small = captured_features(tokenizer, small)
    torch.testing.assert_close(from_big, from_small)


@pytest.mark.parametrize("bias", ["q_bias", "v_bias"])
def test_attention_biases_are_used(tmp_path, checkpoint, state, bias):
    changed = dict(state)
    changed[f"encoder.blocks.0.attn.{bias}"] = state[f"encoder.blocks.0.attn.{bias}"] + 1.0
    other = write_vqkd_checkpoint(tmp_path / "changed.pth", changed)
    x = images()
    _, before = captured_features(tokenizer_for(checkpoint), x)
    _, after = captured_features(tokenizer_for(other), x)
    assert not torch.allclose(before, after, atol=1e-3)


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_weights_at_top_level_or_wrapped(tmp_path, state, wrap):
    path = write_vqkd_checkpoint(tmp_path / "vqkd.pth", state, wrap=wrap)
    tokenizer = tokenizer_for(path)
    assert torch.equal(tokenizer.codebook, state["quantize.embedding.weight"])
    assert torch.equal(tokenizer.encoder.blocks[1].attn.v_bias, state["encoder.blocks.1.attn.v_bias"])


def assert_one_line(error: pytest.ExceptionInfo, path, *words: str) -> None:
    text = str(error.value)
    assert "\n" not in text and str(path) in text, text
    for word in words:
        assert word in text, text


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(path)
    assert_one_line(error, path, "missing")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(path)
    assert_one_line(error, path, "not a PyTorch checkpoint")


def test_pickled_objects_are_refused(tmp_path, state):
    path = tmp_path / "with_args.pth"
    torch.save({"model": state, "args": __import__("argparse").Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(path)
    assert_one_line(error, path, "argparse.Namespace")


def test_missing_key(tmp_path, state):
    del state["encoder.blocks.1.attn.q_bias"]
    path = write_vqkd_checkpoint(tmp_path / "short.pth", state)
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(path)
    assert_one_line(error, path, "missing keys", "encoder.blocks.1.attn.q_bias")


@pytest.mark.parametrize("key", ["encoder.norm.weight", "quantize.embedding.extra", "head.weight"])
def test_unexpected_key(tmp_path, state, key):
    state[key] = torch.zeros(TINY["embed_dim"])
    path = write_vqkd_checkpoint(tmp_path / "long.pth", state)
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(path)
    assert_one_line(error, path, "unexpected keys", key)


def test_shape_mismatch(checkpoint):
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(checkpoint, num_codes=32)
    assert_one_line(error, checkpoint, "quantize.embedding.weight", "(16, 8)", "(32, 8)")
    with pytest.raises(CheckpointError) as error:
        tokenizer_for(checkpoint, size=64)
    assert_one_line(error, checkpoint, "encoder.pos_embed")
