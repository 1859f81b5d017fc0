"""The ways in: console scripts, ``python -m`` entries, and the old module paths (issue 17)."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
import tomllib
import warnings

import pytest

from sparsenet_jax import _legacy

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_entry_point_runs_help(name):
    """Issue 17 bug 1: `sparsenet-train` pointed at a `main` that did not exist."""
    module, attr = SCRIPTS[name].split(":")
    code = (
        f"import sys; sys.argv = [{name!r}, '--help']; "
        f"from {module} import {attr} as main; sys.exit(main())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    # Each says what it does (aot once opened with the trainer's "Train SparseNet…").
    says = {"train": "Train SparseNet", "aot": "for a TPU without one", "export": "Export a"}
    assert says[name.removeprefix("sparsenet-")] in " ".join(result.stdout.split())


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_console_script_runs_help(name):
    """The script pip wrote next to this interpreter (where the package is installed)."""
    script = pathlib.Path(sys.executable).parent / name
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e . writes it)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("entry", ["train", "aot", "export"])
def test_python_m_entry_loads_each_module_once(entry):
    """Issue 17 bug 1: under -m, train.py was loaded a second time through a cli <-> train circle."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"sparsenet_jax.{entry}", "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert f"sparsenet_jax.{entry}" not in imported  # it runs as __main__ only


@pytest.mark.parametrize("old", sorted(_legacy.MOVED))
def test_old_module_paths_alias_their_new_home_and_warn_once(old, monkeypatch):
    monkeypatch.setattr(_legacy, "_warned", set())
    monkeypatch.delitem(sys.modules, f"sparsenet_jax.{old}", raising=False)
    new = importlib.import_module(f"sparsenet_jax.{_legacy.MOVED[old]}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = importlib.import_module(f"sparsenet_jax.{old}")
        sys.modules.pop(f"sparsenet_jax.{old}")
        again = importlib.import_module(f"sparsenet_jax.{old}")
    assert first is new and again is new
    moved = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert len(moved) == 1 and _legacy.MOVED[old] in str(moved[0].message)


def test_old_entry_attributes_still_resolve(monkeypatch):
    monkeypatch.setattr(_legacy, "_warned", set())
    from sparsenet_jax.training.loop import train_and_evaluate

    with pytest.warns(FutureWarning, match="sparsenet_jax.training.loop.train_and_evaluate"):
        from sparsenet_jax.train import train_and_evaluate as old
    assert old is train_and_evaluate
    with pytest.raises(ImportError):
        from sparsenet_jax.train import no_such_name  # noqa: F401


def test_python_m_old_tool_path_still_runs():
    result = subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.tables", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "moved to sparsenet_jax.tools.tables" in result.stderr
