"""What makes the training step fast on the CPU: attention written out in bf16 (torch's flash
kernel is slower there), fused AdamW, and an allocator that keeps freed memory for the next step.
Each is checked for giving the same numbers as what it replaces, and for taking effect."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention

from arvision.engine import make_optimizer
from arvision.model import attention
from arvision.model.attention import MaskedAttention, attend, explicit_attention
from arvision.plan import block_causal_mask
from conftest import tiny_recipe


def qkv(batch=2, heads=3, length=9, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, batch, heads, length, width, generator=generator).unbind(0)


MASKS = {
    "none": None,
    "shared": block_causal_mask(3, 3, False),  # (N, N)
    "per-sample": torch.stack([block_causal_mask(3, 3, False),
                               block_causal_mask(3, 3, False).flip(0, 1)])[:, None],  # (B, 1, N, N)
}


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_explicit_attention_is_sdpa_in_fp32(mask):
    q, k, v = qkv()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_bf16_on_the_cpu_attends_explicitly_with_sdpas_values_and_gradients(mask, monkeypatch):
    q, k, v = (t.requires_grad_() for t in qkv())
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))

    def refuse(*args, **kwargs):
        raise AssertionError("SDPA ran in bf16 on the CPU")

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", refuse)
    with torch.autocast("cpu", torch.bfloat16):
        out = attend(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=0.05, atol=0.05)


def test_fp32_on_the_cpu_keeps_sdpa(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    attend(*qkv(), MASKS["shared"])
    assert calls == [1]


@pytest.mark.parametrize("mask", [None, MASKS["shared"]], ids=["none", "mask"])
def test_masked_attention_computes_timms_attention(mask):
    torch.manual_seed(0)
    ours = MaskedAttention(24, num_heads=3, qkv_bias=True).eval()
    timm_attention = Attention(24, num_heads=3, qkv_bias=True).eval()
    timm_attention.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 24)
    torch.testing.assert_close(ours(x, attn_mask=mask), timm_attention(x, attn_mask=mask))


def test_adamw_is_fused_on_the_cpu():
    model = torch.nn.Linear(4, 4)
    optimizer = make_optimizer(model, tiny_recipe().train, torch.device("cpu"))
    assert optimizer.defaults["fused"] is True
    model(torch.randn(2, 4)).sum().backward()
    before = model.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.weight, before)


# Allocates and frees a 64 MiB tensor six times and counts the page faults of each allocation.
REALLOCATION_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from arvision.engine.cpu_memory import reuse_freed_memory
    if sys.argv[1] == "reuse":
        assert reuse_freed_memory()
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20)  # 64 MiB, freed at once
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")


def reallocation_faults(allocator: str) -> list[int]:
    result = subprocess.run([sys.executable, "-c", REALLOCATION_FAULTS, allocator],
                            capture_output=True, text=True, check=True)
    return [int(count) for count in result.stdout.strip().splitlines()[-1].split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_reuse_keeps_freed_memory_so_reallocating_faults_no_pages():
    # 64 MiB is 16,384 pages of 4 KiB: the system allocator maps them afresh every time; with
    # reuse the heap grows over the first allocations, then serves the block it keeps
    assert min(reallocation_faults("system")) > 4000
    assert max(reallocation_faults("reuse")[-3:]) < 400
