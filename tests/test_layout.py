"""The README's layout claim: imports point one way, tools → training → model → data → leaves."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "sparsenet_jax"
# Lower ranks are lower floors: a module may import its own rank or lower ones.
RANKS = {"_files": 0, "_text": 0, "data": 1, "model": 2, "training": 3, "tools": 4}
ENTRY_RANK = 5  # train.py, aot.py, export.py, _entry.py, _legacy.py, __init__.py


def rank(module: str) -> int:
    """The rank of ``sparsenet_jax.<first>...``; the package itself and entries are on top."""
    parts = module.split(".")
    if len(parts) < 2:
        return ENTRY_RANK
    return RANKS.get(parts[1], ENTRY_RANK)


def imported(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            names += [
                f"{base}.{alias.name}" if base == "sparsenet_jax" else base for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n.split(".")[0] == "sparsenet_jax"]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_wings(path):
    module = ".".join(("sparsenet_jax", *path.relative_to(PACKAGE).with_suffix("").parts))
    module = module.removesuffix(".__init__")
    own = rank(module) if not module.endswith("__main__") else rank(module.rsplit(".", 1)[0])
    upward = [name for name in imported(path) if rank(name) > own]
    assert not upward, f"{module} imports from a higher wing: {upward}"


def test_every_module_has_a_wing():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    top -= {"__pycache__"}
    assert top - set(RANKS) == {"__init__", "_entry", "_legacy", "train", "aot", "export"}
