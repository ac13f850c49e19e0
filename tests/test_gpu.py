"""On CUDA (marked ``gpu``, skipped without it): a bf16 training step, flex attention's losses and
gradients equal SDPA's, train.recompute's gradients equal the recorded graph's, and two processes
on NCCL equal one. benchmarks/gpu_check.sh runs them."""

import math

import pytest
import torch

from arvision.build import build_model, resolve
from arvision.pretrain import build_trainer, train
from conftest import tiny_recipe
from test_attention_backends import CASES, ORDERINGS, backend_recipe, run_backend
from test_distributed import losses, recipe, run

pytestmark = pytest.mark.gpu


def test_bf16_training_steps_on_cuda_with_automatic_flex_attention(tmp_path):
    recipe_ = backend_recipe(ORDERINGS["random_segments"], True, steps=3, base_lr=0.05,
                             precision="bf16", device="cuda")
    trainer = build_trainer(recipe_, tmp_path / "build", "tiny.toml")
    assert trainer.device.type == "cuda" and trainer.model.attention == "flex"  # auto on CUDA
    result = train(recipe_, tmp_path / "run", "tiny.toml")
    assert len(result.losses) == 3 and all(math.isfinite(loss) for loss in result.losses)
    assert result.losses[-1] != result.losses[0]


@pytest.mark.parametrize(("ordering", "cls"), CASES)
def test_flex_gives_the_sdpa_losses_and_gradients_on_cuda(ordering, cls):
    torch.manual_seed(0)
    model = build_model(resolve(backend_recipe(ordering, cls))).cuda().train()
    images, seeds = torch.rand(4, 3, 16, 16, device="cuda"), torch.arange(4)
    expected, expected_grads = run_backend(model, "sdpa", images, seeds, grads=True)
    got, grads = run_backend(model, "flex", images, seeds, grads=True)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_recomputed_mlp_activations_give_the_same_gradients_on_cuda():
    from test_recompute import DIGPT_TINY

    images, results = torch.rand(4, 3, 16, 16, device="cuda"), []
    for recompute in ((), ("mlp_activation", "attention_weights")):
        torch.manual_seed(0)
        model = build_model(resolve(tiny_recipe(**DIGPT_TINY))).cuda().train()
        model.recompute_in_backward(recompute)
        with torch.autocast("cuda", torch.bfloat16):
            loss = model(images, seeds=torch.arange(4)).loss
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters() if p.requires_grad]))
    (kept_loss, kept_grads), (loss, grads) = results
    assert torch.equal(loss, kept_loss)  # forward is the same computation
    for grad, expected in zip(grads, kept_grads, strict=True):  # bitwise on the CPU
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-6)


def test_whole_model_compile_with_flex_on_cuda(tmp_path):
    """train.compile = "model" with flex attention: flex's kernels compiled inside the graph."""
    recipe_ = tiny_recipe(ordering=ORDERINGS["prefix"], train={
        "steps": 3, "base_lr": 0.05, "precision": "bf16", "device": "cuda", "compile": "model"})
    result = train(recipe_, tmp_path, "tiny.toml")
    assert len(result.losses) == 3 and all(math.isfinite(loss) for loss in result.losses)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_on_nccl_match_one_gpu(tmp_path, strategy):
    path = recipe(tmp_path, "random_segments", strategy=strategy, device="cuda")
    run(path, tmp_path / "one", 1)
    run(path, tmp_path / "two", 2)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-3)
