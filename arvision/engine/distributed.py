"""torchrun, DDP and FSDP2: one code path from one CPU process to many GPUs.

``torchrun --nproc_per_node=N -m arvision run RECIPE`` starts N processes; each finds its rank in
the environment torchrun sets. On CUDA they talk over NCCL, on CPU over gloo (so the tests run two
processes here). Checkpoints are full state dicts gathered with
``torch.distributed.checkpoint.state_dict``, so one file format serves every strategy.
"""

import os
from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

__all__ = ["Ranks", "load_train_state", "setup", "train_state", "wrap"]


@attrs.frozen
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Each value averaged over the ranks."""
        if self.world == 1 or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world).tolist(), strict=True))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = (torch.cuda.is_available() and device_name in ("auto", "cuda")) or \
        device_name.startswith("cuda")
    if world == 1:
        name = ("cuda" if cuda else "cpu") if device_name == "auto" else device_name
        return Ranks(), torch.device(name)
    local_rank = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Ranks(dist.get_rank(), world, local_rank), device


def wrap(model: nn.Module, strategy: str, ranks: Ranks, device: torch.device,
         shard_units: Sequence[nn.Module] = (), frozen: set[nn.Parameter] = frozenset()
         ) -> nn.Module:
    """The module the training step calls: the model itself, DDP, or FSDP2-sharded in place.

    FSDP: each of ``shard_units`` (the transformer blocks) is a unit, gathered for its forward and
    backward and sharded otherwise; the rest (embeddings, decoders, heads) forms the root unit,
    kept gathered from forward to backward because the decoders return attrs objects whose
    tensors FSDP cannot hook. ``frozen`` parameters (a teacher) are not sharded.
    """
    if ranks.world == 1:
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in shard_units:
        fully_shard(block)
    fully_shard(model, reshard_after_forward=False, ignored_params=set(frozen) or None)
    return model


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def train_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts, on CPU, whatever the strategy."""
    model_state, optim_state = get_state_dict(model, optimizer, options=_FULL)
    return ({key: value for key, value in model_state.items() if not key.startswith("tokenizer.")},
            optim_state)


def load_train_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                     optim_state: dict[str, Any]) -> None:
    """Load full state dicts into a (possibly sharded) model and its optimiser."""
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True, strict=False))
