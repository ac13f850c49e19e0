"""arvision's encoder out to timm: ``encoder.vit.*`` of an arvision checkpoint is a plain timm
VisionTransformer. :func:`export_folder` writes it in the Hugging Face Hub layout (config.json,
model.safetensors, a model card) that ``timm.create_model("local-dir:PATH", pretrained=True)``
loads and :func:`push_folder` uploads; :func:`export_state_dict` writes the single-file form."""

from ..model.pretrained import timm_arguments
from .folder import FILES, data_config, export_folder
from .hub import PushError, push_folder
from .state_dict import export_state_dict, timm_call

__all__ = ["FILES", "PushError", "data_config", "export_folder", "export_state_dict", "push_folder",
           "timm_arguments", "timm_call"]
