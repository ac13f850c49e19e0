"""Peak memory of a training step, estimated without running it (``arvision check``).

The student runs one forward on fake tensors (shapes and dtypes only, nothing allocated), under the
recipe's autocast, while a saved-tensors hook records every tensor autograd keeps for backward;
storages are counted once (views share them). Run at two batch sizes, that gives

    activations per image = saved(batch 2) - saved(batch 1)     (bytes)
    fixed                 = saved(batch 1) - activations per image   (autocast weight copies, ...)
    peak(batch)          ~= train state + fixed + activations per image x batch

where the train state is the fp32 weights, gradients and AdamW moments (16 bytes a parameter).
What it leaves out: the tokenizer (a teacher's weights and its forward, or a target cache's
batch), the data loader, and the backward's transient gradients of one block (small beside
the saved activations of a whole network).
"""

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from .build import Blueprint, build_model
from .components import Tokens
from .precision import autocast, planned_precision

__all__ = ["ADAMW_BYTES_PER_PARAM", "MemoryEstimate", "allocator_peak", "estimate_memory"]

ADAMW_BYTES_PER_PARAM = 16  # fp32 weight, gradient and two moments


@attrs.frozen
class MemoryEstimate:
    state_bytes: int  # fp32 weights, gradients, AdamW moments
    fixed_bytes: int  # saved for backward whatever the batch (autocast's weight copies, ...)
    per_image_bytes: int  # activations saved for backward, per image
    precision: str  # the resolved precision the forward ran in

    def peak(self, batch: int) -> int:
        return self.state_bytes + self.fixed_bytes + self.per_image_bytes * batch


def fake_tokens(blueprint: Blueprint, batch: int) -> Tokens:
    """Targets of the tokenizer's shape (zeros): what the student's forward needs of them."""
    spec = blueprint.tokens
    if spec.discrete:
        tokens = torch.zeros(batch, *spec.grid, dtype=torch.long)
    else:
        tokens = torch.zeros(batch, *spec.grid, spec.dim)
    return Tokens(tokens, torch.zeros(batch, spec.dim) if spec.cls else None)


def _saved_bytes(model: torch.nn.Module, blueprint: Blueprint, batch: int, precision: str) -> int:
    """Bytes of the storages autograd saves in one forward at ``batch``, parameters excluded."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    image = blueprint.image
    images = torch.zeros(batch, image.channels, image.size, image.size)  # (B, C, H, W)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            autocast(torch.device("cpu"), precision):
        model(images, tokens=fake_tokens(blueprint, batch))
    return sum(saved.values())


def estimate_memory(blueprint: Blueprint) -> MemoryEstimate:
    """The training step's memory for ``blueprint`` at the precision its recipe resolves to here
    (on the CPU's autocast rules: CUDA's differ little for these layers)."""
    train = blueprint.recipe.train
    precision = planned_precision(train.precision, train.device)
    with torch.device("meta"):
        model = build_model(blueprint, with_tokenizer=False)
    model.recompute_in_backward(train.recompute, train.activation_checkpointing)
    with FakeTensorMode(allow_non_fake_inputs=True):  # the meta parameters are its inputs
        model.to_empty(device="cpu")  # fake CPU tensors: CPU autocast applies, nothing allocated
        one, two = (_saved_bytes(model, blueprint, batch, precision) for batch in (1, 2))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_image = two - one
    return MemoryEstimate(trainable * ADAMW_BYTES_PER_PARAM, max(one - per_image, 0), per_image,
                          precision)


def allocator_peak(run: Callable[[], Any]) -> int:
    """The most bytes PyTorch's CPU allocator held during ``run()`` above what it held before:
    every allocation and free, in order, from torch.profiler's memory events. Unlike the
    process's resident memory, this leaves out what the C allocator keeps after a free."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        run()
    changes = sorted((event.start_ns(), event.nbytes())  # allocations (+) and frees (-)
                     for event in prof.profiler.kineto_results.events()
                     if event.name() == "[memory]")
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak
