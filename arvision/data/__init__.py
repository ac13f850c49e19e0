"""Image data sources: each yields ``(image (C, H, W) float in [0, 1], label int)``."""

from arvision.data.fashion_mnist import FashionMNIST
from arvision.data.synthetic import SyntheticImages

__all__ = ["FashionMNIST", "SyntheticImages"]
