"""Activations that backward recomputes instead of keeping from forward (``train.recompute``).

``mlp_activation``: an MLP's fc2 keeps its input, the activation's output (B, N, hidden), for
its weight gradient, while the activation keeps its own input, fc1's output, of the same size.
The activation is elementwise and cheap, so :class:`RecomputingMlp` keeps only fc1's output
and recomputes the activation from it in fc2's backward: the same gradients, one (B, N, hidden)
tensor less per block until backward reaches it.

``attention_weights``: where attention is written out (bf16 on the CPU), its (B, H, N, M)
softmax weights are recomputed from q and k (:func:`arvision.model.attention.explicit_attention`).

Both trade a little time for memory, in the same math (docs/performance.md measures them);
:func:`set_recompute` switches them on a built model. Whole blocks
(``train.activation_checkpointing``) go through :func:`run_block`.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["RECOMPUTABLE", "RecomputingMlp", "run_block", "set_recompute"]

#: What ``train.recompute`` may name.
RECOMPUTABLE = ("mlp_activation", "attention_weights")


def set_recompute(model: nn.Module, kinds: Iterable[str]) -> None:
    """Make every layer of ``model`` recompute ``kinds`` (of :data:`RECOMPUTABLE`) in backward
    and keep the rest: :class:`RecomputingMlp` layers and attention layers with a
    ``recompute_weights`` flag (``MaskedAttention``, the decoders' cross-attention)."""
    kinds = set(kinds)
    if unknown := kinds - set(RECOMPUTABLE):
        raise ValueError(f"train.recompute: unknown {sorted(unknown)}; expected some of "
                         f"{list(RECOMPUTABLE)}")
    for module in model.modules():
        if isinstance(module, RecomputingMlp):
            module.recompute_activation = "mlp_activation" in kinds
        if hasattr(module, "recompute_weights"):
            module.recompute_weights = "attention_weights" in kinds


def run_block(block: Callable[..., Tensor], checkpointed: bool, *args: Any, **kwargs: Any
              ) -> Tensor:
    """``block(*args, **kwargs)``; with ``checkpointed``, through torch's non-reentrant
    checkpoint: its activations are recomputed in backward instead of kept."""
    if checkpointed:
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes linear layers in on ``device_type`` now; None when it is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _LinearOfActivation(torch.autograd.Function):
    """``F.linear(act(hidden), weight, bias)`` that keeps ``hidden`` (which the activation's own
    backward needs anyway) and recomputes ``act(hidden)`` in backward, where the recorded graph
    would keep both. The weight and bias are cast to autocast's dtype here, as autocast would;
    backward applies the recorded graph's formulas in the same order (``addmm``'s and the
    activation's own), so the gradients equal its bitwise."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                act: nn.Module) -> Tensor:
        dtype = _autocast_dtype(hidden.device.type)
        cast_weight = weight.to(dtype) if dtype is not None else weight
        cast_bias = bias.to(dtype) if dtype is not None and bias is not None else bias
        ctx.act, ctx.has_bias, ctx.weight_dtype = act, bias is not None, weight.dtype
        ctx.save_for_backward(hidden, cast_weight)
        return F.linear(act(hidden), cast_weight, cast_bias)  # (..., out)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None]:
        hidden, weight = ctx.saved_tensors
        with torch.enable_grad():
            leaf = hidden.detach().requires_grad_()
            activated = ctx.act(leaf)  # (..., hidden), as in forward
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (T, out)
        grad_activated = (flat_grad @ weight).view(activated.shape)
        grad_weight = (activated.detach().reshape(-1, activated.shape[-1]).t() @ flat_grad).t()
        grad_bias = flat_grad.sum(0).to(ctx.weight_dtype) if ctx.has_bias else None
        (grad_hidden,) = torch.autograd.grad(activated, leaf, grad_activated)
        return grad_hidden, grad_weight.to(ctx.weight_dtype), grad_bias, None


class RecomputingMlp(Mlp):
    """timm's ``Mlp`` (same parameters, same names) whose fc2 does not keep the activation's
    output for backward: it is recomputed from fc1's output, which the activation keeps anyway.

    When ``recompute_activation`` is set (:func:`set_recompute`) and it holds: autograd
    recording in training, no dropout between the activation and fc2, no hidden norm, and not
    inside ``torch.compile`` (whose partitioner chooses what to recompute itself); otherwise
    timm's forward.
    """

    recompute_activation: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if not self._recomputes():
            return super().forward(x)
        hidden = self.fc1(x)  # (B, N, hidden)
        out = _LinearOfActivation.apply(hidden, self.fc2.weight, self.fc2.bias, self.act)
        return self.drop2(out)

    def _recomputes(self) -> bool:
        return (self.recompute_activation and torch.is_grad_enabled() and self.training
                and self.drop1.p == 0 and isinstance(self.norm, nn.Identity)
                and isinstance(self.fc2, nn.Linear) and not torch.compiler.is_compiling())
