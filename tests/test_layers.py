"""The package's layers: imports only go down (science -> data -> evaluation -> lit -> runs),
and the error types sit at the package root."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaelab"
LAYERS = ("errors", "science", "data", "evaluation", "lit", "runs")


def layer_of(module: str) -> int | None:
    """The layer index of a ``vaelab.<part>...`` module name (None for the package root)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def vaelab_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n == "vaelab" or n.startswith("vaelab.")]


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        assert parts[0] in ("__init__.py", *LAYERS, "errors.py"), path
        assert parts[0] != "errors" or len(parts) == 1


def test_imports_only_go_down_the_layers():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        own = LAYERS.index(part)
        for module in vaelab_imports(path):
            target = layer_of(module)
            if target is not None and target > own:
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert upward == []


def test_the_layers_below_lightning_do_not_import_it():
    for part in ("science", "data", "evaluation"):
        for path in (PACKAGE / part).rglob("*.py"):
            text = path.read_text()
            if part != "data":  # the data module is a LightningDataModule
                assert "import lightning" not in text and "from lightning" not in text, path
            assert "hydra" not in text.replace("Hydra", ""), path
