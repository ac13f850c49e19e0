"""The student: a timm ViT driven over a plan (:class:`Encoder`) and the autoregressive step
around it (:class:`ARModel`): tokenizer, ordering, encoder, decoders and target."""

from .ar_model import ARModel, DecoderRole, ModelOutput, resample_segments
from .encoder import Encoder, default_taps
from .vit import channel_stat, create_vit

__all__ = ["ARModel", "DecoderRole", "Encoder", "ModelOutput", "channel_stat", "create_vit",
           "default_taps", "resample_segments"]
