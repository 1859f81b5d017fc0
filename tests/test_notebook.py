"""The Colab notebook: saved clean, in sync with its generator, and runs top to bottom.

The run (marked slow) executes ``notebooks/sparsenet_colab.ipynb`` headless with nbclient in quick
mode (``SPARSENET_NOTEBOOK_QUICK=1``) on CPU, in a kernel that uses this interpreter.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = NOTEBOOKS / "sparsenet_colab.ipynb"
KERNEL_NAME = "sparsenet-notebook-test"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_saved_without_outputs():
    notebook = _read()
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id} has saved outputs"
            assert cell.execution_count is None, f"cell {cell.id} has an execution count"


def test_notebook_matches_its_generator():
    result = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "make_notebook.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _kernelspec(folder: pathlib.Path) -> pathlib.Path:
    """A kernelspec that runs ipykernel with this interpreter (this venv), whatever else is installed."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "sparsenet_jax test kernel",
                "language": "python",
            }
        )
    )
    return folder


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output and "text/plain" in output.data:
            parts.append(output.data["text/plain"])
    return "".join(parts)


def _has_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


@pytest.mark.slow  # about 90 s on a 2-core CPU, most of it XLA compiling
def test_notebook_runs_in_quick_mode(tmp_path, monkeypatch):
    # The kernel inherits this environment.
    monkeypatch.setenv("SPARSENET_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's workdir and figures go here
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))

    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    notebook = _read()
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError naming the cell if any cell fails

    cells = {cell.id: cell for cell in notebook.cells}
    for cell in notebook.cells:
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"cell {cell.id}: {errors}"

    assert "mode: quick" in _text(cells["flags"])
    assert "already installed" in _text(cells["install"])
    assert "backend: cpu" in _text(cells["devices"])
    assert _has_image(cells["schedule"])
    matrix = _text(cells["matrix"])
    assert "dense: 45 connections" in matrix and "sparse: 25 connections" in matrix
    table = json.dumps([o.get("data", {}) for o in cells["table"].outputs])  # markdown or pandas
    for name, params in (("sparsenet-40-24", "748,522"), ("densenet-40-12", "1,059,298")):
        assert name in table and params in table
    assert "GFLOPs/image" in table
    assert _has_image(cells["train"])  # the live figure, updated in place
    assert "best test accuracy" in _text(cells["evaluate"]) and _has_image(cells["evaluate"])
    checkpoint = _text(cells["checkpoint"])
    assert "checkpoints: ['23', '30']" in checkpoint
    assert "restored step 30" in checkpoint and "test metrics match: OK" in checkpoint
    converter = _text(cells["convert"])
    match = re.search(r"converter max abs error vs PyTorch: (\S+)", converter)
    assert match, converter
    assert float(match.group(1)) < 1e-4
    assert "same predictions: True" in converter
    # Quick mode writes nothing next to the notebook.
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before
