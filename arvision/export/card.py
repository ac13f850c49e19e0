"""The model card (README.md) of an exported encoder: timm's own card layout
(``timm.models._hub.generate_readme``: Hub metadata, details, usage, comparison), filled from the
checkpoint's recipe and the run's probe results, then the recipe itself."""

from pathlib import Path
from typing import Any

import tomli_w
from timm.models.vision_transformer import VisionTransformer

from ..evaluate.runner import read_results
from ..model.pretrained import PretrainedEncoder
from ..recipe import recipe_to_dict

__all__ = ["model_card", "results_table"]

TASK = "image-feature-extraction"

USAGE = """```python
import timm

model = timm.create_model("{name}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)  # input size, mean, std of the recipe
transform = timm.data.create_transform(**config)
tokens = model.forward_features(transform(image).unsqueeze(0))  # (1, {tokens}, {dim})
pooled = model(transform(image).unsqueeze(0))  # (1, {dim})
```
`image` is a PIL image. Once uploaded, `"hf-hub:ORG/NAME"` loads it the same way.
"""


def model_card(encoder: PretrainedEncoder, vit: VisionTransformer, checkpoint: Path, weights: str,
               name: str, license: str) -> str:
    """README.md text for the export of ``checkpoint``'s encoder (built as ``vit``)."""
    from timm.models._hub import generate_readme

    recipe = encoder.recipe
    size, channels = vit.patch_embed.img_size[0], vit.patch_embed.proj.in_channels
    parts = ", ".join(f"{table.loss_key} ({table.name}, predicts {table.predicts})"
                      for table in recipe.decoders)
    params = sum(value.numel() for value in vit.parameters())
    data = recipe.data
    card = {
        "tags": [TASK, "timm", "arvision"], "license": license,
        "description": (f"A ViT encoder pretrained autoregressively with arvision: "
                        f"{recipe.tokenizer.name} targets, {recipe.ordering.name} order, decoders "
                        f"{parts}, {recipe.target.name} loss. Exported from `{checkpoint}` (step "
                        f"{encoder.step}, {'EMA' if weights == 'ema' else 'trained'} weights)."),
        "details": {
            "Model Type": "Image feature backbone (no classifier head)",
            "Architecture": f"timm {recipe.encoder.name}",
            "Model Stats": {"Params (M)": round(params / 1e6, 2),
                            "Image size": f"{size} x {size}, {channels} channel(s)",
                            "Patch size": vit.patch_embed.patch_size[0]},
            "Input normalisation": f"mean {list(encoder.mean)}, std {list(encoder.std)}",
            "Pretraining data": f"{data.source} ({data.root or 'default root'}), split "
                                f"{data.split}" + (f", first {data.limit} images" if data.limit else ""),
            "Pretraining": f"{encoder.step} steps of batch {recipe.train.batch_size}",
        },
        "usage": USAGE.format(name=f"local-dir:{name}", tokens=vit.num_prefix_tokens +
                              vit.patch_embed.num_patches, dim=vit.embed_dim),
    }
    table = results_table(checkpoint.parent)
    if table:
        card["comparison"] = table
    text = generate_readme(card, name, task_name=TASK)
    recipe_text = tomli_w.dumps(recipe_to_dict(recipe))
    return f"{text}\n## Recipe\n\n```toml\n{recipe_text}```\n"


def results_table(run_dir: Path) -> str:
    """The run's probe and fine-tuning results (``eval.json``) as a Markdown table; '' without."""
    results = read_results(run_dir / "eval.json")
    rows = []
    for label, section in (("trained", results), ("random init", results.get("random_init", {}))):
        for probe in ("linear", "knn", "attentive", "finetune"):
            if isinstance(section.get(probe), dict) and "top1" in section[probe]:
                rows.append(_row(probe, label, section[probe]))
    if not rows:
        return ""
    return "\n".join(["Top-1 / top-5 accuracy (%) of the run's evaluations (`eval.json`):", "",
                      "| evaluation | weights | top-1 | top-5 | train / eval images |",
                      "|---|---|---|---|---|", *rows, ""])


def _row(probe: str, label: str, result: dict[str, Any]) -> str:
    top5 = f"{result['top5']:.2f}" if "top5" in result else "-"
    blocks = f", blocks {result['blocks']}" if "blocks" in result else ""
    images = f"{result.get('train_images', '-')} / {result.get('eval_images', '-')}"
    return f"| {probe}{blocks} | {label} | {result['top1']:.2f} | {top5} | {images} |"
