"""Documentation that is generated from the code stays in step with it."""

from arvision.reference import recipe_reference
from conftest import REPO


def test_recipe_reference_is_up_to_date():
    written = (REPO / "docs" / "recipes.md").read_text()
    assert written == recipe_reference(), (
        "docs/recipes.md is stale: run `python -m arvision.reference > docs/recipes.md`")


def test_recipe_reference_documents_every_key():
    text = recipe_reference()
    for key in ("train.steps", "train.base_lr", "data.limit", "data.num_workers", "encoder.stem"):
        section, name = key.split(".")
        assert f"## `[{section}]`" in text and f"| `{name}` |" in text, key
    assert "### tokenizer `palette`" in text and "| `path` | `str` | required |" in text


def test_vqkd_recipe_tables_in_tokenizers_md_are_up_to_date():
    from arvision.reference import _table
    from arvision_plugins.vqkd_recipe import VQKDEncoderConfig, VQKDTrainConfig

    written = (REPO / "docs" / "tokenizers.md").read_text()
    for heading, cls in (("### `[vqkd]`", VQKDTrainConfig),
                         ("### `[encoder]` of a VQ-KD recipe", VQKDEncoderConfig)):
        section = written[written.index(heading):]
        table = "\n".join(_table(cls))
        assert table in section.split("\n### ")[0], (
            f"docs/tokenizers.md: the table under {heading} differs from {cls.__name__}'s fields")
