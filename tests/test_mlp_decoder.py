"""AIM's MLP head: per-token residual MLP blocks, as the released AIM v1 setup (ml-l3m) builds it."""

import pytest
import torch
import torch.nn.functional as F

from arvision.build import build_model, resolve
from arvision_plugins.mlp_decoder import MLPBlock
from conftest import tiny_recipe


def mlp_model(**decoder):
    table = {"name": "mlp", "dim": 24, "depth": 3, **decoder}
    return build_model(resolve(tiny_recipe(decoders=[table]), "tiny.toml"))


def test_block_adds_the_normed_input_then_the_mlp():
    torch.manual_seed(0)
    block = MLPBlock(8, 32, eps=1e-5, bias=False, identity_attention=True)
    for norm in (block.norm1, block.norm2):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, 8)
    y = x + F.layer_norm(x, (8,), block.norm1.weight, block.norm1.bias, 1e-5)
    hidden = F.gelu(F.layer_norm(y, (8,), block.norm2.weight, block.norm2.bias, 1e-5)
                    @ block.mlp.fc1.weight.T)
    torch.testing.assert_close(block(x), y + hidden @ block.mlp.fc2.weight.T)
    assert block.mlp.fc1.bias is None and block.mlp.fc2.bias is None  # AIM: no MLP biases
    plain = MLPBlock(8, 32, eps=1e-5, bias=True, identity_attention=False)
    assert plain.norm1 is None and plain.mlp.fc1.bias is not None


def test_head_structure_and_initialisation():
    model = mlp_model(dim=64, depth=12)
    head = model.decoders["mlp_next"]
    assert len(head.blocks) == 12 and head.proj.bias is not None and head.head.bias is not None
    assert head.blocks[0].mlp.fc1.out_features == 256  # mlp_ratio 4
    assert head.norm.eps == 1e-5 and head.blocks[0].norm2.eps == 1e-5
    assert torch.all(head.proj.bias == 0) and torch.all(head.head.bias == 0)
    # the output Linear: fan-in variance scaling by 1 / (1 + depth)
    expected = 1 / 13 / 64
    assert abs(head.head.weight.var().item() / expected - 1) < 0.35
    assert "decoders.mlp_next.position" not in model.state_dict()  # fixed, rebuilt from config


def test_each_token_is_predicted_from_its_own_output_alone():
    model = mlp_model().eval()
    memory = model.encoder(torch.rand(2, 3, 16, 16), model.plan(2))
    last = memory.last.detach().requires_grad_(True)
    prediction = model.decoders["mlp_next"](type(memory)(last, memory.taps, memory.num_prefix),
                                            model.plan(2)).tokens  # (B, 15, 1, D)
    for k in (0, 7, 14):
        (grad,) = torch.autograd.grad(prediction[0, k].sum(), last, retain_graph=True)
        reads = grad.abs().sum(-1)  # (B, 1 + 15)
        assert reads[0, 1 + k] > 0
        assert reads.sum() == reads[0, 1 + k]


@pytest.mark.parametrize("predicts", ["next", "visible"])
def test_position_is_that_of_the_predicted_token(predicts):
    model = mlp_model(predicts=predicts, depth=1)
    head = model.decoders[f"mlp_{predicts}"]
    order = torch.tensor([[3, 1, 0, 2, *range(4, 16)]])
    plan = model.plan(1, order)
    memory = model.encoder(torch.rand(1, 3, 16, 16), plan)
    seen = {}
    head.blocks[0].register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    head(memory, plan)
    targets = order[0, 1:] if predicts == "next" else order[0, :-1]
    expected = head.proj(memory.last)[:, 1:] + head.position[:, targets]
    torch.testing.assert_close(seen["x"][:, 1:], expected)
    torch.testing.assert_close(seen["x"][:, 0], head.proj(memory.last)[:, 0])  # CLS: none
