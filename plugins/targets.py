"""Built-in targets: cross-entropy on ids; mean squared error and cosine distance on features."""

import attrs
import torch.nn.functional as F
from torch import Tensor

from arvision import hookimpl
from arvision.components import Target, TokenSpec
from arvision.config import check, setting

__all__ = ["CosineConfig", "CosineTarget", "CrossEntropyConfig", "CrossEntropyTarget", "MSEConfig",
           "MSETarget"]


@attrs.frozen
class CrossEntropyConfig:
    label_smoothing: float = setting(0.0, "label smoothing of the token cross-entropy",
                                     validator=check(lambda v: 0 <= v < 1, "a number in [0, 1)"))


class CrossEntropyTarget(Target):
    """Cross-entropy of predicted logits against token ids."""

    def __init__(self, config: CrossEntropyConfig, spec: TokenSpec) -> None:
        if not spec.discrete:
            raise ValueError("'ce' scores token ids but the tokenizer gives features; "
                             "use 'mse' (or 'cosine')")
        super().__init__(config, spec)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(prediction.float(), target, reduction="none",
                               label_smoothing=self.config.label_smoothing)  # (N,)


@attrs.frozen
class MSEConfig:
    """Squared error per feature, averaged per token (AIM's pixel loss)."""


class MSETarget(Target):
    """Mean squared error between predicted and target features."""

    def __init__(self, config: MSEConfig, spec: TokenSpec) -> None:
        if spec.discrete:
            raise ValueError("'mse' scores features but the tokenizer gives ids; use 'ce'")
        super().__init__(config, spec)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return (prediction.float() - target.float()).pow(2).mean(dim=-1)  # (N,)


@attrs.frozen
class CosineConfig:
    """2 - 2 cos(prediction, target), both L2-normalised (D-iGPT, BYOL)."""


class CosineTarget(Target):
    """Negative cosine similarity as a distance: 0 when aligned, 4 when opposite."""

    def __init__(self, config: CosineConfig, spec: TokenSpec) -> None:
        if spec.discrete:
            raise ValueError("'cosine' scores features but the tokenizer gives ids; use 'ce'")
        super().__init__(config, spec)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        cos = F.cosine_similarity(prediction.float(), target.float(), dim=-1, eps=1e-6)  # (N,)
        return 2 - 2 * cos


@hookimpl
def register_targets(register):
    register("ce", CrossEntropyTarget, CrossEntropyConfig)
    register("mse", MSETarget, MSEConfig)
    register("cosine", CosineTarget, CosineConfig)
