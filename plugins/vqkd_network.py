"""The VQ-KD network, shared by the ``vqkd`` tokenizer (vqkd.py) and its trainer (vqkd_model.py):
timm's ``Beit`` as BEiT v2's encoder and decoder, and the sizes a checkpoint records."""

from timm.models.beit import Beit

__all__ = ["SIZES", "beit_vit"]

#: The ``vqkd`` tokenizer keys that a checkpoint trained here records under ``"vqkd"``.
SIZES = ("size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "num_codes",
         "code_dim")


def beit_vit(size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
             drop_path: float = 0.0) -> Beit:
    """The VQ-KD encoder (and decoder) network: timm's ``Beit`` as the reference's
    ``VisionTransformer`` with ``use_mean_pooling`` (``norm`` an Identity, ``fc_norm`` after the
    blocks), absolute positions, no relative position bias, no layer scale, no head."""
    return Beit(
        img_size=size, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool="avg",
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True,
        drop_path_rate=drop_path, init_values=None, use_abs_pos_emb=True, use_rel_pos_bias=False,
        use_shared_rel_pos_bias=False,
    )
