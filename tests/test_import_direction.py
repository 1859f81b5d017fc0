"""Imports point one way between the wings (issue 17: the README's claim, made checkable).

    _files, _text  ←  data  ←  model  ←  training  ←  tools  ←  entry points

A module may import its own wing and the wings to its left, never one to its
right, at module level or inside a function.
"""

from __future__ import annotations

import ast
import pathlib

import sparsenet_jax

PACKAGE = pathlib.Path(sparsenet_jax.__file__).parent
RANKS = {"_files": 0, "_text": 0, "data": 1, "model": 2, "training": 3, "tools": 4}
ENTRY = 5  # __init__, _legacy, train, aot, export, and anything else at the top


def _rank(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "sparsenet_jax":
        return -1
    return RANKS.get(parts[1], ENTRY) if len(parts) > 1 else ENTRY


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sparsenet_jax":  # from sparsenet_jax import data
                found += [(node.lineno, f"sparsenet_jax.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_no_import_points_back_up():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("sparsenet_jax", *path.relative_to(PACKAGE).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        rank = _rank(name)
        for line, module in _imports(path):
            if _rank(module) > rank:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "imports pointing back up:\n" + "\n".join(wrong)
