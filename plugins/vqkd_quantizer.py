"""BEiT v2's quantiser, trained: an L2-normalised codebook updated by EMA, started by k-means.

What the reference does (microsoft/unilm ``beit2/norm_ema_quantizer.py``,
``NormEMAVectorQuantizer`` and ``EmbeddingEMA``) and how this module does it:

- Inputs and codes are L2-normalised; the id is the nearest code (``argmin`` of the squared L2
  distance there, which on unit vectors is the ``argmax`` of the cosine used here).
- k-means initialisation (``EmbeddingEMA.init_embed_`` -> ``kmeans(..., 10, use_cosine_sim=True)``):
  on the first training batch, the codebook becomes spherical k-means of the batch's normalised
  vectors: centres drawn from the samples, 10 Lloyd iterations of cosine assignment, each centre
  the normalised mean of its members, an empty cluster keeping its centre. Here the draw takes
  distinct vectors (so duplicates in a batch cannot start two equal codes) from a generator seeded
  by the run's seed, over the vectors of every rank (the reference clusters each rank's own batch,
  so its ranks can start from different codebooks).
- EMA update (``NormEMAVectorQuantizer.forward``, ``norm_ema_inplace``), every training batch:
  ``bins`` = vectors per code, ``mean`` = normalised mean of each code's vectors (summed over
  ranks, as the reference's ``all_reduce``), and ``code <- l2norm(decay * code + (1 - decay) *
  mean)`` for the codes used in the batch. Unused codes keep their value (the reference's
  ``torch.where(zero_mask, weight, ...)``; it then renormalises every code, which moves unused
  ones by rounding only; here they are left untouched). ``decay`` 0.99 in the reference
  (``--ema_decay``). The codes are buffers, never touched by the optimiser.
- Commitment and straight-through: ``loss = beta * mse(z_q.detach(), z)`` with ``beta = 1.0``
  (``VQKD.__init__``), and the decoder reads ``z + (z_q - z).detach()``. As in the reference, the
  codes ``z_q`` are those before this batch's EMA update.
- Dead codes: the reference has no restart (an unused code keeps its value; it counts the unused
  codes per epoch, ``engine_for_vqkd.py``, from ``cluster_size``, an EMA of ``bins``, kept here
  too). With ``dead_after = N`` a code unused for N batches is restarted on a random vector of the
  current batch (drawn on rank 0, from a generator seeded by the run's seed and the batch count).
- Usage: the number of codes used in the last ``usage_window`` batches and the perplexity of this
  batch's codes are returned for logging (the reference logs ``Unused_code`` per epoch).

Every piece of state is a buffer (codebook, counters, the batch at which each code was last used),
so a checkpoint holds it and a resumed run continues exactly.
"""

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Quantized", "VectorQuantizer", "spherical_kmeans"]

NEVER = -1  # ``last_used`` of a code no batch has picked


@attrs.frozen
class Quantized:
    """The quantiser's output for (B, N, D) inputs."""

    codes: Tensor  # (B, N, D) z + (z_q - z).detach(): the codes forward, the identity backward
    ids: Tensor  # (B, N) long
    loss: Tensor  # scalar: beta * mse(z_q.detach(), z)
    stats: dict[str, float]  # codebook usage for the logs


def spherical_kmeans(samples: Tensor, num: int, iterations: int, generator: torch.Generator
                     ) -> Tensor:
    """``num`` unit centres of unit ``samples`` (N, D) by cosine k-means: (num, D)."""
    distinct = torch.unique(samples, dim=0)
    pool = distinct if len(distinct) >= num else samples
    pick = torch.randperm(len(pool), generator=generator)[:num] if len(pool) >= num else \
        torch.randint(len(pool), (num,), generator=generator)
    means = pool[pick.to(pool.device)]  # (num, D)
    for _ in range(iterations):
        buckets = (samples @ means.T).argmax(dim=-1)  # (N,)
        bins = torch.bincount(buckets, minlength=num)  # (num,)
        sums = torch.zeros_like(means).index_add_(0, buckets, samples)
        new = F.normalize(sums / bins.clamp(min=1)[:, None], dim=-1)
        means = torch.where(bins[:, None] == 0, means, new)  # an empty cluster keeps its centre
    return means


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sum_over_ranks(tensor: Tensor) -> Tensor:
    if _world() > 1:
        dist.all_reduce(tensor)
    return tensor


def _gather(tensor: Tensor) -> Tensor:
    """(N, D) from each rank -> (world * N, D), the same on every rank."""
    if _world() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(_world())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class VectorQuantizer(nn.Module):
    """L2-normalised codebook (num_codes, code_dim) with EMA updates, k-means start, dead-code
    restarts and usage statistics (module docstring)."""

    def __init__(self, num_codes: int, code_dim: int, *, decay: float = 0.99, beta: float = 1.0,
                 kmeans_init: bool = True, kmeans_iterations: int = 10,
                 dead_after: int | None = None, usage_window: int = 100, seed: int = 0) -> None:
        super().__init__()
        self.num_codes, self.code_dim, self.decay, self.beta = num_codes, code_dim, decay, beta
        self.kmeans_iterations, self.dead_after = kmeans_iterations, dead_after
        self.usage_window, self.seed = usage_window, seed
        start = torch.zeros(num_codes, code_dim) if kmeans_init else \
            F.normalize(torch.randn(num_codes, code_dim), dim=-1)
        self.register_buffer("codebook", start)  # (K, D), unit rows
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("cluster_size", torch.zeros(num_codes))  # EMA of codes per batch
        self.register_buffer("batches", torch.tensor(0))  # training batches seen
        self.register_buffer("last_used", torch.full((num_codes,), NEVER))  # batch of last use
        self.register_buffer("started", torch.zeros(num_codes, dtype=torch.long))  # (re)start batch

    def nearest(self, z: Tensor) -> Tensor:
        """Unit vectors (..., D) -> ids (...) of the codes of largest cosine."""
        return (z @ self.codebook.T).argmax(dim=-1)

    def forward(self, z: Tensor) -> Quantized:
        """Features (B, N, D) (fp32) -> :class:`Quantized`; in training, the codebook learns."""
        z = F.normalize(z, dim=-1)  # (B, N, D)
        flat = z.detach().reshape(-1, self.code_dim)  # (B*N, D)
        if self.training and not self.initted:
            self.kmeans_start(flat)
        ids = self.nearest(flat)  # (B*N,)
        z_q = F.embedding(ids, self.codebook).view_as(z)  # (B, N, D): the codes before the update
        bins = _sum_over_ranks(torch.bincount(ids, minlength=self.num_codes).float())  # (K,)
        if self.training:
            with torch.no_grad():
                restarted = self.update(flat, ids, bins)
        loss = self.beta * F.mse_loss(z_q.detach(), z)
        codes = z + (z_q - z).detach()
        stats = {"codebook/used": self.codes_used(), "codebook/perplexity": perplexity(bins)}
        if self.training and self.dead_after is not None:
            stats["codebook/restarted"] = float(restarted)
        return Quantized(codes, ids.view(z.shape[:-1]), loss, stats)

    @torch.no_grad()
    def kmeans_start(self, flat: Tensor) -> None:
        """The codebook from spherical k-means of the first batch (every rank's vectors)."""
        generator = torch.Generator().manual_seed(self.seed)
        samples = _gather(flat.float())
        self.codebook.copy_(spherical_kmeans(samples, self.num_codes, self.kmeans_iterations,
                                             generator))
        self.initted.fill_(True)

    @torch.no_grad()
    def update(self, flat: Tensor, ids: Tensor, bins: Tensor) -> int:
        """One EMA step of the codebook towards this batch's means; returns the codes restarted."""
        sums = _sum_over_ranks(torch.zeros_like(self.codebook).index_add_(0, ids, flat.float()))
        self.cluster_size.mul_(self.decay).add_(bins, alpha=1 - self.decay)
        used = bins > 0  # (K,)
        means = F.normalize(sums[used] / bins[used, None], dim=-1)  # (U, D)
        self.codebook[used] = F.normalize(self.codebook[used] * self.decay
                                          + means * (1 - self.decay), dim=-1)
        self.batches += 1
        self.last_used[used] = self.batches
        return self.restart_dead(flat) if self.dead_after is not None else 0

    def restart_dead(self, flat: Tensor) -> int:
        """Codes unused for ``dead_after`` batches (since their last use or start) restart on
        random vectors of this batch, drawn on rank 0."""
        idle = self.batches - torch.maximum(self.last_used, self.started)  # (K,)
        dead = (idle >= self.dead_after).nonzero().flatten()
        if not len(dead):
            return 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.batches))
        pick = torch.randint(len(flat), (len(dead),), generator=generator).to(flat.device)
        fresh = F.normalize(flat[pick].float(), dim=-1)  # (dead, D)
        if _world() > 1:
            dist.broadcast(fresh, src=0)
        self.codebook[dead] = fresh
        self.started[dead] = self.batches
        return len(dead)

    def codes_used(self) -> float:
        """Codes picked in the last ``usage_window`` training batches."""
        recent = (self.last_used != NEVER) & (self.batches - self.last_used < self.usage_window)
        return float(recent.sum())


def perplexity(bins: Tensor) -> float:
    """exp(entropy) of the codes' frequencies: the number of equally used codes it amounts to."""
    p = bins / bins.sum().clamp(min=1)
    return float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))
