"""The memory estimate of `arvision check` against the allocator's own record of a real CPU
training step (torch.profiler's memory events: every allocation and free, in order)."""

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.memory import allocator_peak, estimate_memory, fake_tokens
from conftest import run_cli, tiny_data, tiny_recipe


def blueprint_of(precision: str, **encoder):
    recipe = tiny_recipe(encoder={"embed_dim": 64, "depth": 3, "num_heads": 4, **encoder},
                         train={"batch_size": 8, "steps": 1, "precision": precision})
    return resolve(recipe, "tiny.toml")


def step_peak(blueprint, batch: int) -> int:
    """Peak bytes the allocator held above its starting point during forward + backward of one
    step at ``batch`` (the weights and optimiser state are not counted: they exist before)."""
    torch.manual_seed(0)
    model = build_model(blueprint, with_tokenizer=False)
    image = blueprint.image
    images = torch.rand(batch, image.channels, image.size, image.size)
    tokens = fake_tokens(blueprint, batch)
    precision = blueprint.recipe.train.precision

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            model(images, tokens=tokens).loss.backward()

    return allocator_peak(step)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activations_per_image_match_the_allocator(precision):
    blueprint = blueprint_of(precision)
    estimate = estimate_memory(blueprint)
    assert estimate.precision == precision
    measured = (step_peak(blueprint, 64) - step_peak(blueprint, 16)) / 48
    assert estimate.per_image_bytes == pytest.approx(measured, rel=0.25)


def test_bf16_saves_smaller_activations_than_fp32():
    fp32, bf16 = (estimate_memory(blueprint_of(p)) for p in ("fp32", "bf16"))
    assert bf16.per_image_bytes < 0.8 * fp32.per_image_bytes
    assert bf16.state_bytes == fp32.state_bytes  # fp32 weights, grads, moments either way
    assert bf16.fixed_bytes > fp32.fixed_bytes  # autocast's bf16 copies of the weights


def test_activations_grow_with_depth_and_the_state_with_parameters():
    small, deep = estimate_memory(blueprint_of("fp32")), estimate_memory(blueprint_of("fp32",
                                                                                      depth=6))
    assert 1.5 < deep.per_image_bytes / small.per_image_bytes < 2.5
    assert deep.state_bytes > small.state_bytes
    assert small.peak(10) == small.state_bytes + small.fixed_bytes + 10 * small.per_image_bytes


def test_check_prints_the_estimate(capsys, monkeypatch, tmp_path):
    import tomli_w

    monkeypatch.setenv("COLUMNS", "250")
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(tiny_data(train={"batch_size": 8, "precision": "fp32"})))
    code, stdout, stderr = run_cli(capsys, "check", path)
    assert code == 0, stderr
    assert "peak memory" in stdout and "a process at micro-batch 8" in stdout
    assert "of activations per image" in stdout


def test_a_model_fake_tensors_cannot_run_is_named_not_fatal(capsys, monkeypatch, tmp_path):
    import tomli_w

    from arvision import summary

    def data_dependent(blueprint):
        raise RuntimeError("aten._local_scalar_dense: data-dependent output\nthe rest of the trace")

    monkeypatch.setattr(summary, "estimate_memory", data_dependent)
    monkeypatch.setenv("COLUMNS", "250")
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(tiny_data(train={"batch_size": 8, "precision": "fp32"})))
    code, stdout, stderr = run_cli(capsys, "check", path)
    assert code == 0, stderr  # the rest of the summary still prints
    assert "not estimated: aten._local_scalar_dense: data-dependent output" in stdout
    assert "the rest of the trace" not in stdout and "FLOPs / image" in stdout
