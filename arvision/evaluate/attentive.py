"""AIM's attentive probe on frozen token features.

    tokens (B, T, D) --BatchNorm1d(affine=False) per channel--> (B, T, D)
    one learned query (1, D) --multi-head cross-attention (key and value projections)--> (B, D)
    --Linear--> logits (B, C)

As in AIM's released head (``AttentionPoolingClassifier``) the query is used as is (no query
projection), key and value projections have no bias, and there is no output projection; unlike
it, the linear head has a bias. Trained with AdamW and a cosine schedule on the cached (or
streamed) token features, without augmentation.
"""

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .probes import heldout_split, one_thread, topk_accuracy

__all__ = ["AttentiveProbe", "attentive_probe"]

TokenSource = Tensor | Callable[[Tensor], Tensor]  # tokens (N, T, D), or index (b,) -> (b, T, D)
MIN_THREADED = 1 << 20  # token values per batch below which extra intra-op threads only cost


class AttentiveProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attentive probe: {num_heads} heads do not divide the width {dim}")
        self.num_heads = num_heads
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Token features (B, T, D) -> logits (B, C)."""
        batch, length, dim = tokens.shape
        heads = self.num_heads
        x = self.norm(tokens.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        q = self.query.expand(batch, -1, -1).reshape(batch, 1, heads, -1).transpose(1, 2)
        k = self.k(x).reshape(batch, length, heads, -1).transpose(1, 2)  # (B, h, T, D/h)
        v = self.v(x).reshape(batch, length, heads, -1).transpose(1, 2)  # (B, h, T, D/h)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, D/h)
        return self.head(pooled.transpose(1, 2).reshape(batch, dim))  # (B, C)


def _fetcher(source: TokenSource) -> Callable[[Tensor], Tensor]:
    if isinstance(source, Tensor):
        return lambda index: source[index].float()
    return source


def attentive_probe(train: TokenSource, train_y: Tensor, eval_: TokenSource, eval_y: Tensor,
                    num_heads: int, epochs: int = 10, lr: float = 1e-2, weight_decay: float = 0.05,
                    batch_size: int = 256, min_steps: int = 200, seed: int = 0,
                    lrs: Sequence[float] | None = None, heldout: float = 0.1) -> dict[str, Any]:
    """Train the probe on ``train`` tokens, score ``eval_``. Returns top1 [, top5] and settings.

    ``lrs``: candidate learning rates, chosen by top-1 on a seeded ``heldout`` part of train (the
    probe trained on the rest); the winner is retrained on all of train. Without ``lrs``: ``lr``.
    """
    fetch_train, fetch_eval = _fetcher(train), _fetcher(eval_)
    classes = int(max(train_y.max().item(), eval_y.max().item())) + 1
    fit = functools.partial(_fit, num_heads=num_heads, classes=classes, epochs=epochs,
                            weight_decay=weight_decay, batch_size=batch_size,
                            min_steps=min_steps, seed=seed)
    chosen, held_top1 = lrs[0] if lrs else lr, None
    split = heldout_split(train_y.shape[0], heldout, seed) if lrs and len(lrs) > 1 else None
    if split is not None:
        part, held = split
        for candidate in lrs:
            probe, _ = fit(lambda index, part=part: fetch_train(part[index]), train_y[part],
                           lr=candidate)
            logits = _predict(probe, lambda index: fetch_train(held[index]), held.shape[0],
                              batch_size)
            top1 = topk_accuracy(logits, train_y[held], classes)["top1"]
            if held_top1 is None or top1 > held_top1:
                chosen, held_top1 = candidate, top1
    probe, epochs = fit(fetch_train, train_y, lr=chosen)
    logits = _predict(probe, fetch_eval, eval_y.shape[0], batch_size)
    result = {**topk_accuracy(logits, eval_y, classes), "epochs": epochs, "lr": chosen,
              "weight_decay": weight_decay, "heads": num_heads}
    if lrs:
        result.update(lrs=list(lrs), heldout_top1=held_top1)
    return result


def _fit(fetch: Callable[[Tensor], Tensor], labels: Tensor, *, num_heads: int, classes: int,
         epochs: int, lr: float, weight_decay: float, batch_size: int, min_steps: int, seed: int
         ) -> tuple[AttentiveProbe, int]:
    """A seeded probe trained on the tokens ``fetch`` gives for labels (N,); (probe, epochs run)."""
    sample = fetch(torch.arange(1))  # (1, T, D)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttentiveProbe(sample.shape[-1], classes, num_heads)
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in probe.parameters() if p.ndim > 1 and p is not probe.query]
    rest = [p for p in probe.parameters() if p.ndim <= 1 or p is probe.query]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    count = labels.shape[0]
    batch = min(batch_size, count)
    per_epoch = math.ceil(count / batch)
    epochs = max(epochs, math.ceil(min_steps / per_epoch))
    total = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    small = batch * sample.shape[1] * sample.shape[2] < MIN_THREADED
    with one_thread() if small else contextlib.nullcontext():
        probe = _train(probe, fetch, labels, optimizer, schedule, epochs, batch, gen)
    return probe, epochs


@torch.no_grad()
def _predict(probe: AttentiveProbe, fetch: Callable[[Tensor], Tensor], count: int,
             batch_size: int) -> Tensor:
    """Logits (N, C) of the ``count`` token sets ``fetch`` gives, in order."""
    return torch.cat([probe(fetch(torch.arange(start, min(start + batch_size, count))))
                      for start in range(0, count, batch_size)])


def _train(probe: AttentiveProbe, fetch: Callable[[Tensor], Tensor], labels: Tensor, optimizer,
           schedule, epochs: int, batch: int, gen: torch.Generator) -> AttentiveProbe:
    count = labels.shape[0]
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(count, generator=gen)
        for start in range(0, count, batch):
            index = order[start:start + batch]
            if index.numel() < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(probe(fetch(index)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return probe.eval()
