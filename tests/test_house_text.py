"""Text that describes the code says what the code is (issue 17, "Stale text")."""

from __future__ import annotations

import pathlib
import re
import tomllib

import sparsenet_jax.data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_data_package_docstring_names_every_module():
    """Issue 17: data/__init__.py omitted imagenet_grain."""
    folder = pathlib.Path(sparsenet_jax.data.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__"}
    doc = sparsenet_jax.data.__doc__ or ""
    missing = sorted(m for m in modules if f"``{m}``" not in doc)
    assert not missing, f"data/__init__.py does not describe {missing}"


def test_ruff_targets_the_python_the_package_requires():
    """Issue 17: ruff's target-version was py310 while requires-python is >= 3.11."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = re.fullmatch(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"].strip())
    assert required, pyproject["project"]["requires-python"]
    assert pyproject["tool"]["ruff"]["target-version"] == f"py3{required[1]}"
