"""The one rule of direction: a module of arvision/ imports only modules of its own layer or of
layers below it (docs/architecture.md draws them). Imports inside functions count too."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

#: Bottom to top. A module belongs to the layer of the longest name here that prefixes its own.
LAYERS = (
    ("foundation", ("arvision", "arvision.errors", "arvision.seeds", "arvision.config",
                    "arvision.plan", "arvision.checkpoint", "arvision.hookspecs",
                    "arvision.registry", "arvision.traceable", "arvision.precision")),
    ("components", ("arvision.components",)),
    ("recipe schema", ("arvision.recipe",)),
    ("plugin loading", ("arvision.plugins",)),
    ("data", ("arvision.data",)),
    ("model", ("arvision.model",)),
    ("build", ("arvision.build", "arvision.summary", "arvision.memory")),
    ("engine", ("arvision.engine",)),
    ("tasks", ("arvision.pretrain", "arvision.finetune", "arvision.evaluate", "arvision.convert",
               "arvision.export", "arvision.ablate")),
    ("interface", ("arvision.cli", "arvision.reference", "arvision.__main__")),
)


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
               for prefix in prefixes if module == prefix or module.startswith(f"{prefix}.")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the drawing")
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The arvision modules ``path`` imports, relative imports resolved, anywhere in the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "arvision" or name.startswith("arvision.")}


def known(name: str) -> bool:
    """Whether ``name`` is a module or package of arvision/ (not a name imported from one)."""
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, as 'importer (layer) -> imported (layer)'."""
    found = []
    for importer, imported in sorted(edges.items()):
        for name in sorted(imported):
            if layer_of(name) > layer_of(importer):
                found.append(f"{importer} ({LAYERS[layer_of(importer)][0]}) -> {name} "
                             f"({LAYERS[layer_of(name)][0]})")
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): {name for name in imports_of(path) if known(name)}
            for path in sorted((REPO / "arvision").rglob("*.py"))}


def test_no_module_imports_a_higher_layer():
    assert violations(import_graph()) == []


def test_the_check_sees_an_upward_import():
    edges = {"arvision.data.loader": {"arvision.build"}, "arvision.cli.run": {"arvision.engine"}}
    assert violations(edges) == ["arvision.data.loader (data) -> arvision.build (build)"]


def test_lazy_and_relative_imports_are_read(tmp_path, monkeypatch):
    package = tmp_path / "arvision" / "data"
    package.mkdir(parents=True)
    module = package / "example.py"
    module.write_text("from ..build import resolve\n\ndef f():\n    from ..engine import fit\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert imports_of(module) >= {"arvision.build", "arvision.engine"}


@pytest.mark.parametrize("path", sorted((REPO / "arvision").rglob("*.py")),
                         ids=lambda path: str(path.relative_to(REPO)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 400, "split the module (docs/architecture.md)"
